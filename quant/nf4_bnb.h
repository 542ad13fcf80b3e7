/* nf4_bnb.h - a qt_nf4_tensor in the safetensors layout bitsandbytes / transformers give a
 * Linear4bit weight (Params4bit state_dict with QuantState.as_dict(packed=True)):
 *   <p>.weight                                   U8  [(n+1)/2, 1] packed codes
 *   <p>.weight.absmax                            U8  [blocks] (nested) or F32 [blocks]
 *   <p>.weight.quant_map                         F32 [16]
 *   <p>.weight.nested_absmax                     F32 [ceil(blocks/256)]   (nested only)
 *   <p>.weight.nested_quant_map                  F32 [256]                (nested only)
 *   <p>.weight.quant_state.bitsandbytes__nf4     U8  [len] the JSON text below
 * JSON (json.dumps defaults, this key order): {"quant_type": "nf4", "blocksize": 64,
 * "dtype": "bfloat16", "shape": [4096, 4096], "nested_blocksize": 256,
 * "nested_dtype": "float32", "nested_offset": <repr of the fp32 offset as a Python float>}. */
#ifndef QT_NF4_BNB_H
#define QT_NF4_BNB_H

#include <stddef.h>

#include "nf4.h"
#include "safetensors.h"

enum { QT_BNB_NAME_MAX = 512, QT_BNB_JSON_MAX = 512, QT_BNB_MAX_ENTRIES = 6 };

/* The entries of one weight, pointing into t and into this struct: keep both alive until the
 * entries are serialized. `prefix` is the module name ("model.layers.0.mlp.down_proj"). */
typedef struct {
    char names[QT_BNB_MAX_ENTRIES][QT_BNB_NAME_MAX];
    char json[QT_BNB_JSON_MAX];
    float nested_map[256];
    qt_st_entry entries[QT_BNB_MAX_ENTRIES];
    int nentries; /* 6 when nested, 4 otherwise */
} qt_nf4_bnb_pack;

int qt_nf4_bnb_pack_init(qt_nf4_bnb_pack *p, const qt_nf4_tensor *t, const char *prefix);

/* the packed quant_state JSON of t (NUL-terminated); returns its length or a negative code */
int qt_nf4_bnb_quant_state_json(const qt_nf4_tensor *t, char *out, size_t cap);

/* Python's repr() of a float (shortest round-trip digits, Python's exponent rules), as
 * json.dumps writes it */
int qt_py_float_repr(double v, char *out, size_t cap);

/* Reads <prefix>.weight* from f into t (allocated; free with qt_nf4_tensor_free). Checks that
 * every tensor's dtype and size agree with the JSON and that the stored maps are bitsandbytes'
 * NF4 values and dynamic map. */
int qt_nf4_bnb_read(qt_nf4_tensor *t, const qt_st_file *f, const char *prefix, char *err,
                    size_t errlen);

#endif
