/* rope.h - rotary embedding frequencies: the inv_freq vector that qt_rope takes, computed the way
 * Hugging Face transformers computes it (modeling_rope_utils.py: _compute_default_rope_parameters
 * and _compute_llama3_parameters), step by step in f32 as torch does, so that a model loaded from
 * a Hugging Face config rotates by the same angles. */
#ifndef QT_ROPE_H
#define QT_ROPE_H

#include <stdint.h>

enum { QT_ROPE_DEFAULT = 0, QT_ROPE_LLAMA3 = 1 };

/* config.json's rope_scaling (or rope_parameters) block */
typedef struct {
    int type; /* QT_ROPE_DEFAULT or QT_ROPE_LLAMA3 */
    double factor, low_freq_factor, high_freq_factor;
    int64_t original_max_position_embeddings;
} qt_rope_scaling;

/* out[hd/2] = 1 / theta^(2i/hd), then llama3's wavelength-dependent scaling when sc says so.
 * sc == NULL means the default (unscaled) frequencies. The power is the correctly rounded f32
 * pow of f32 operands; torch's vectorised pow may differ from it by 1 ulp on some elements. */
void qt_rope_inv_freq(float *out /* [hd/2] */, int head_dim, double theta,
                      const qt_rope_scaling *sc);

#endif
