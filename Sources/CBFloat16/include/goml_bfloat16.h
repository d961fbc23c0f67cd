// bfloat16 <-> float32: the one rounding every part of goml-dist applies (the bf16 products'
// packing, gradients and weights on the wire, the in-process communicator). Round to nearest,
// ties to even; a NaN stays a NaN (its quiet bit set, so rounding never carries it into an
// infinity).
#ifndef GOML_BFLOAT16_H
#define GOML_BFLOAT16_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

static inline uint16_t goml_bf16_from_float(float value) {
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40);
    return (uint16_t)((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

static inline float goml_bf16_to_float(uint16_t value) {
    uint32_t bits = (uint32_t)value << 16;
    float result;
    memcpy(&result, &bits, sizeof result);
    return result;
}

/// `count` values rounded to bfloat16 words, as goml_bf16_from_float rounds each.
static inline void goml_bf16_encode(const float *values, uint16_t *words, size_t count) {
    for (size_t i = 0; i < count; i++) words[i] = goml_bf16_from_float(values[i]);
}

/// `count` bfloat16 words widened to float32.
static inline void goml_bf16_decode(const uint16_t *words, float *values, size_t count) {
    for (size_t i = 0; i < count; i++) values[i] = goml_bf16_to_float(words[i]);
}

#endif
