/* arena.h - bump allocators for per-step memory (activations, their gradients, tape metadata).
 * One arena per kind of memory: the host arena holds tensor structs; the data arena holds tensor
 * data on the context's device. Chunks are kept across resets so that after the first step no
 * allocation reaches malloc/cudaMalloc. A mark/rewind pair frees everything allocated after the
 * mark, which activation checkpointing uses to drop a replayed block's activations. */
#ifndef QT_ARENA_H
#define QT_ARENA_H

#include <stddef.h>

#include "tensor.h"

typedef struct qt_arena_chunk {
    struct qt_arena_chunk *next;
    char *base;
    size_t cap, used;
} qt_arena_chunk;

typedef struct qt_arena {
    qt_device device;
    size_t chunk_size; /* default size of a new chunk */
    qt_arena_chunk *head, *cur;
    size_t in_use;     /* bytes handed out since the last reset */
    size_t high_water; /* the most in_use ever reached */
    size_t reserved;   /* bytes held in chunks */
    void *cuda;        /* the qt_cuda_ctx when device == QT_CUDA */
} qt_arena;

typedef struct {
    qt_arena_chunk *chunk;
    size_t used, in_use;
} qt_arena_mark;

void qt_arena_init(qt_arena *a, qt_device dev, size_t chunk_size, void *cuda);
/* 256-byte aligned (fits every vector width and cuBLAS' alignment wishes); NULL on failure */
void *qt_arena_alloc(qt_arena *a, size_t bytes);
void qt_arena_reset(qt_arena *a);
qt_arena_mark qt_arena_get_mark(const qt_arena *a);
void qt_arena_rewind(qt_arena *a, qt_arena_mark m);
void qt_arena_free(qt_arena *a);

/* raw device memory (persistent allocations go through these too) */
void *qt_dev_malloc(qt_device dev, void *cuda, size_t bytes);
void qt_dev_free(qt_device dev, void *cuda, void *p);

#endif
