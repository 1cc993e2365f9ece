/* Shared helpers of the kernel's translation units (not part of the cffi surface). */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../include/sipagent_kernel.h"

/* Little-endian PCM16 access that is alignment-safe; compilers turn these into plain loads/stores. */
static inline int load_s16(const unsigned char *p)
{
    return (int16_t)(uint16_t)(p[0] | (p[1] << 8));
}

static inline void store_s16(unsigned char *p, int v)
{
    p[0] = (unsigned char)(v & 0xFF);
    p[1] = (unsigned char)((v >> 8) & 0xFF);
}

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define SK_LITTLE_ENDIAN 1
#endif

/* n PCM16 bytes pairs -> floats (the resampler's staging area). */
static inline void load_pcm_float(float *dst, const unsigned char *src, int n)
{
#ifdef SK_LITTLE_ENDIAN
    int16_t tmp[SK_RS_CHUNK];
    memcpy(tmp, src, 2 * (size_t)n); /* src may be unaligned: one copy, then a vectorised convert */
    for (int i = 0; i < n; i++)
        dst[i] = (float)tmp[i];
#else
    for (int i = 0; i < n; i++)
        dst[i] = (float)load_s16(src + 2 * i);
#endif
}

static inline void store_pcm(unsigned char *dst, const int16_t *src, size_t n)
{
#ifdef SK_LITTLE_ENDIAN
    memcpy(dst, src, 2 * n);
#else
    for (size_t i = 0; i < n; i++)
        store_s16(dst + 2 * i, src[i]);
#endif
}

static inline int clamp_int(int v, int lo, int hi)
{
    return v < lo ? lo : (v > hi ? hi : v);
}

static inline int sat16(int v)
{
    return clamp_int(v, -32768, 32767);
}

/* G.711 (g711.c): decoding tables and floor(log2(i)) for the encoders' segment search. */
extern const int16_t sk_ulaw_table[256];
extern const int16_t sk_alaw_table[256];
extern const unsigned char sk_log2_tab[256];

/* Branchless: the segment is the position of the top bit, found by one table lookup. */
static inline unsigned char sk_ulaw_from_linear(int sample)
{
    int v = sample >> 2; /* 14-bit magnitude domain */
    int mask = v < 0 ? 0x7F : 0xFF;
    v = v < 0 ? -v : v;
    v = (v > 8158 ? 8158 : v) + 33; /* clip (8158 and 8159 share the top code); bias: segments at 2^k */
    int seg = sk_log2_tab[v >> 5];
    return (unsigned char)(((seg << 4) | ((v >> (seg + 1)) & 0x0F)) ^ mask);
}

static inline unsigned char sk_alaw_from_linear(int sample)
{
    int v = sample >> 3; /* 13-bit domain */
    int mask = v < 0 ? 0x55 : 0xD5;
    v = v < 0 ? -v - 1 : v;
    int seg = sk_log2_tab[v >> 4]; /* v <= 4095: 0 below 32, then one per octave */
    return (unsigned char)(((seg << 4) | ((v >> (seg + (seg == 0))) & 0x0F)) ^ mask);
}
/* The resampler consumes up to SK_RS_CHUNK new samples written as floats at sk_rs_stage(), then
 * sk_rs_commit() writes the outputs they complete (at most c*L/M + 1) and keeps the history. */
static inline float *sk_rs_stage(sk_resampler *r)
{
    return r->buf + (SK_RS_MAX_TAPS - 1);
}
size_t sk_rs_commit(sk_resampler *r, int c, int16_t *out);
/* Streams n native samples (no odd-byte handling) through the resampler. */
size_t sk_resampler_run(sk_resampler *r, const int16_t *in, size_t n, int16_t *out);
/* One 64 kbit/s code from a pair of 16 kHz samples, and back. */
unsigned char sk_g722_encode_pair(sk_g722_encoder *e, int x0, int x1);
void sk_g722_decode_code(sk_g722_decoder *d, unsigned char code, int16_t out[2]);
