/* arena.c - chunked bump allocator (see arena.h). */
#include "arena.h"

#include <stdlib.h>
#include <string.h>

#ifdef QT_HAVE_CUDA
#include "cuda/cuda_backend.h"
#endif

#define QT_ALIGN 256

void *qt_dev_malloc(qt_device dev, void *cuda, size_t bytes) {
    if (bytes == 0) bytes = QT_ALIGN;
    if (dev == QT_CPU) {
        size_t n = (bytes + QT_ALIGN - 1) / QT_ALIGN * QT_ALIGN;
        return aligned_alloc(QT_ALIGN, n);
    }
#ifdef QT_HAVE_CUDA
    return qt_cuda_malloc((qt_cuda_ctx *)cuda, bytes);
#else
    (void)cuda;
    return NULL;
#endif
}

void qt_dev_free(qt_device dev, void *cuda, void *p) {
    if (!p) return;
    if (dev == QT_CPU) {
        free(p);
        return;
    }
#ifdef QT_HAVE_CUDA
    qt_cuda_free((qt_cuda_ctx *)cuda, p);
#else
    (void)cuda;
#endif
}

void qt_arena_init(qt_arena *a, qt_device dev, size_t chunk_size, void *cuda) {
    memset(a, 0, sizeof *a);
    a->device = dev;
    a->chunk_size = chunk_size;
    a->cuda = cuda;
}

static qt_arena_chunk *chunk_new(qt_arena *a, size_t cap) {
    qt_arena_chunk *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->base = qt_dev_malloc(a->device, a->cuda, cap);
    if (!c->base) {
        free(c);
        return NULL;
    }
    c->cap = cap;
    a->reserved += cap;
    return c;
}

void *qt_arena_alloc(qt_arena *a, size_t bytes) {
    size_t need = (bytes + QT_ALIGN - 1) / QT_ALIGN * QT_ALIGN;
    if (need == 0) need = QT_ALIGN;
    if (!a->cur) {
        if (!a->head) {
            a->head = chunk_new(a, need > a->chunk_size ? need : a->chunk_size);
            if (!a->head) return NULL;
        }
        a->cur = a->head;
        a->cur->used = 0;
    }
    /* walk forward through chunks kept from earlier steps before making a new one */
    while (a->cur->used + need > a->cur->cap) {
        qt_arena_chunk *next = a->cur->next;
        if (next && next->cap >= need) {
            a->cur = next;
            a->cur->used = 0;
            continue;
        }
        qt_arena_chunk *c = chunk_new(a, need > a->chunk_size ? need : a->chunk_size);
        if (!c) return NULL;
        c->next = a->cur->next; /* a too-small successor stays in the list, after the new one */
        a->cur->next = c;
        a->cur = c;
    }
    void *p = a->cur->base + a->cur->used;
    a->cur->used += need;
    a->in_use += need;
    if (a->in_use > a->high_water) a->high_water = a->in_use;
    return p;
}

static void free_chunks(qt_arena *a) {
    qt_arena_chunk *c = a->head;
    while (c) {
        qt_arena_chunk *n = c->next;
        qt_dev_free(a->device, a->cuda, c->base);
        free(c);
        c = n;
    }
    a->head = a->cur = NULL;
    a->reserved = 0;
}

void qt_arena_reset(qt_arena *a) {
    /* Steps repeat their allocations: once a step has needed several chunks, replace them by
     * one chunk of the high water, so every later step bump-allocates in it with no gap at a
     * chunk's end (the memory held is then exactly the step's peak) and no new allocation. */
    if (a->head && a->head->next) {
        size_t cap = a->high_water > a->chunk_size ? a->high_water : a->chunk_size;
        free_chunks(a);
        a->head = chunk_new(a, cap); /* on failure the next alloc starts from scratch */
    }
    a->cur = a->head;
    if (a->cur) a->cur->used = 0;
    a->in_use = 0;
}

qt_arena_mark qt_arena_get_mark(const qt_arena *a) {
    qt_arena_mark m = {a->cur, a->cur ? a->cur->used : 0, a->in_use};
    return m;
}

void qt_arena_rewind(qt_arena *a, qt_arena_mark m) {
    a->cur = m.chunk;
    if (a->cur) a->cur->used = m.used;
    a->in_use = m.in_use;
}

void qt_arena_free(qt_arena *a) {
    free_chunks(a);
    a->in_use = 0;
}
