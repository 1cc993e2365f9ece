/* G.711 μ-law and A-law.
 *
 * μ-law follows the Sun/CCITT lineage (the table of Python's audioop): the 16-bit sample is reduced to
 * 14 bits with an arithmetic shift, so -1..-4 encode to 0x7E, not to the ITU G.191 reference's 0x7F.
 * A-law and both decoders agree across all common implementations. Decoding is a table lookup (the
 * tables are the decoding formulas evaluated by the compiler); encoding is inline in sk_internal.h.
 */
#include "sk_internal.h"

/* μ-law: complement, then (mantissa * 8 + bias) << segment, minus the bias. */
#define ULAW_T(u) ((((((u) & 0x0F) << 3) + 0x84) << (((u) & 0x70) >> 4)) - 0x84)
#define ULAW(c) ((((~(c)) & 0x80) ? -ULAW_T((~(c)) & 0xFF) : ULAW_T((~(c)) & 0xFF)))
/* A-law: toggle even bits; segment 0 has no implicit leading one. */
#define ALAW_S(a) (((a) & 0x70) >> 4)
#define ALAW_T(a) ((ALAW_S(a) == 0 ? (((a) & 0x0F) << 4) + 8                                     \
                                   : ((((a) & 0x0F) << 4) + 0x108) << (ALAW_S(a) > 1 ? ALAW_S(a) - 1 : 0)))
#define ALAW(c) ((((c) ^ 0x55) & 0x80) ? ALAW_T((c) ^ 0x55) : -ALAW_T((c) ^ 0x55))

#define T4(f, i) f(i), f((i) + 1), f((i) + 2), f((i) + 3)
#define T16(f, i) T4(f, i), T4(f, (i) + 4), T4(f, (i) + 8), T4(f, (i) + 12)
#define T64(f, i) T16(f, i), T16(f, (i) + 16), T16(f, (i) + 32), T16(f, (i) + 48)
#define T256(f) T64(f, 0), T64(f, 64), T64(f, 128), T64(f, 192)
const int16_t sk_ulaw_table[256] = {T256(ULAW)};
const int16_t sk_alaw_table[256] = {T256(ALAW)};
/* The same as floats, for the fused decoders that feed the resampler (saves a conversion per sample). */
const float sk_ulaw_ftable[256] = {T256(ULAW)};
const float sk_alaw_ftable[256] = {T256(ALAW)};

void sk_ulaw_encode(const unsigned char *pcm, size_t n, unsigned char *out)
{
    for (size_t i = 0; i < n; i++)
        out[i] = sk_ulaw_from_linear(load_s16(pcm + 2 * i));
}

void sk_ulaw_decode(const unsigned char *in, size_t n, unsigned char *pcm)
{
    for (size_t i = 0; i < n; i++)
        store_s16(pcm + 2 * i, sk_ulaw_table[in[i]]);
}

void sk_alaw_encode(const unsigned char *pcm, size_t n, unsigned char *out)
{
    for (size_t i = 0; i < n; i++)
        out[i] = sk_alaw_from_linear(load_s16(pcm + 2 * i));
}

void sk_alaw_decode(const unsigned char *in, size_t n, unsigned char *pcm)
{
    for (size_t i = 0; i < n; i++)
        store_s16(pcm + 2 * i, sk_alaw_table[in[i]]);
}
