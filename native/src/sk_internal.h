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
    for (int i = 0; i < n; i++) { /* src may be unaligned: memcpy per sample becomes a vector load */
        int16_t v;
        memcpy(&v, src + 2 * i, sizeof(v));
        dst[i] = (float)v;
    }
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

/* G.711 (g711.c): decoding tables, as int16 and as float. */
extern const int16_t sk_ulaw_table[256];
extern const int16_t sk_alaw_table[256];
extern const float sk_ulaw_ftable[256];
extern const float sk_alaw_ftable[256];

/* Float bits of a small positive integer: exponent = position of its top bit, and the next mantissa
 * bits follow it, exact below 2^24. This finds a G.711 segment and its 4-bit step with no table, so the
 * encoders' loops vectorise (memcpy is the portable type pun; compilers emit a plain move). */
static inline int32_t sk_top_bits(int32_t v)
{
    float f = (float)v;
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    return (int32_t)(u >> 19); /* (biased exponent << 4) | top 4 mantissa bits */
}

static inline unsigned char sk_ulaw_from_linear(int sample)
{
    int32_t v = sample >> 2; /* 14-bit magnitude domain */
    int32_t mask = v < 0 ? 0x7F : 0xFF;
    v = v < 0 ? -v : v;
    v = (v > 8158 ? 8158 : v) + 33; /* clip (8158 and 8159 share the top code); bias: segments at 2^k */
    /* v in [33, 8191]: segment = top bit - 5, step = the 4 bits below the top bit */
    return (unsigned char)((sk_top_bits(v) - ((127 + 5) << 4)) ^ mask);
}

static inline unsigned char sk_alaw_from_linear(int sample)
{
    int32_t v = sample >> 3; /* 13-bit domain */
    int32_t mask = v < 0 ? 0x55 : 0xD5;
    v = v < 0 ? -v - 1 : v; /* v <= 4095: segment 0 below 32 (step v/2), then one per octave */
    int32_t top = sk_top_bits(v) - ((127 + 4) << 4); /* computed for every v: a select, not a branch */
    int32_t low = -(int32_t)(v < 32); /* all ones in segment 0 */
    int32_t code = (top & ~low) | ((v >> 1) & low);
    return (unsigned char)(code ^ mask);
}
/* The resampler consumes up to SK_RS_CHUNK new samples written as floats at sk_rs_stage(), then
 * sk_rs_commit() writes the outputs they complete (at most c*L/M + 1) and keeps the history. */
static inline float *sk_rs_stage(sk_resampler *r)
{
    return r->buf + (SK_RS_MAX_TAPS - 1);
}
size_t sk_rs_commit(sk_resampler *r, int c, int16_t *out);
/* The same with the outputs written as PCM16 or as G.711 codes (one byte each). */
#define SK_OUT_S16 0
#define SK_OUT_ULAW 1
#define SK_OUT_ALAW 2
size_t sk_rs_commit_to(sk_resampler *r, int c, void *out, int mode);
/* When sk_rs_takes_pcm(r) (24 kHz -> 8 kHz on AVX2): the same as staging c <= SK_RS_CHUNK samples and
 * sk_rs_commit_to, reading the 2*c bytes of PCM16 directly (no staging pass). */
int sk_rs_takes_pcm(const sk_resampler *r);
/* n G.711 codes (A-law when alaw) -> the floats of sk_ulaw_ftable / sk_alaw_ftable, SIMD when available. */
void sk_g711_floats(const unsigned char *in, int n, float *out, int alaw);
size_t sk_rs_push_pcm(sk_resampler *r, const unsigned char *pcm, int c, void *out, int mode);
/* Streams n native samples (no odd-byte handling) through the resampler. */
size_t sk_resampler_run(sk_resampler *r, const int16_t *in, size_t n, int16_t *out);
/* SIMD level in use (sk_simd_level), detected on first use: 0 selects the plain C loops everywhere. */
int sk_simd_active(void);
/* npairs pairs of 16 kHz samples -> npairs 64 kbit/s codes (no held sample), and n codes -> 2n samples. */
void sk_g722_encode_block(sk_g722_encoder *e, const int16_t *pcm, int npairs, unsigned char *out);
void sk_g722_decode_block(sk_g722_decoder *d, const unsigned char *in, int n, int16_t *pcm);
/* The encoder's two stages, as sk_g722_encode_block runs them: the transmit QMF (npairs pairs -> the
 * sub-band samples xl, xh) and the ADPCM coding of n such pairs. */
void sk_g722_analyse(sk_g722_encoder *e, const int16_t *pcm, int npairs, int32_t *xl, int32_t *xh);
void sk_g722_code(sk_g722_encoder *e, const int32_t *xl, const int32_t *xh, int n, unsigned char *out);
/* sk_g722_code for SK_G722_LANES encoders at once, n pairs each, with the same codes (g722_lanes.c).
 * Only when sk_g722_lanes_ready(): AVX2 present and the SIMD level in use >= 1. */
#define SK_G722_LANES SK_ENC_LANES
int sk_g722_lanes_ready(void);
void sk_g722_code_lanes(sk_g722_encoder *const e[SK_G722_LANES], const int32_t *const xl[SK_G722_LANES],
                        const int32_t *const xh[SK_G722_LANES], int n, unsigned char *const out[SK_G722_LANES]);
/* A batch's staged frames cut into groups for the lanes, as sk_enc24k_finish and sk_frame_finish share
 * them: in list order, runs of up to SK_G722_LANES items with equal counts. take(items, i) returns item
 * i's staged count and clears it (0 or less: nothing staged, or an item listed twice); each group goes to
 * finish(items, members, g, n) as the indices of its g items, n codes or pairs each. */
typedef int sk_lane_take_fn(const void *items, int i);
typedef void sk_lane_finish_fn(const void *items, const int *members, int g, int n);
void sk_lane_groups(const void *items, int count, sk_lane_take_fn *take, sk_lane_finish_fn *finish);
/* Why a state whose batch field is listed_in cannot join batch b, which lists count states, now:
 * SK_BATCH_FINISH_FIRST (it waits in b already, or b is full) or SK_BATCH_ELSEWHERE; 0 if it can. */
static inline int sk_batch_refusal(const void *listed_in, const void *b, int count)
{
    if (listed_in != NULL)
        return listed_in == b ? SK_BATCH_FINISH_FIRST : SK_BATCH_ELSEWHERE;
    return count >= SK_BATCH_MAX ? SK_BATCH_FINISH_FIRST : 0;
}
/* The decoder's two stages, as sk_g722_decode_block runs them: the ADPCM decoding of n codes into the
 * receive QMF's inputs (ev: rl + rh, od: rl - rh), and the receive QMF over n <= SK_G722_QMF_BLOCK of
 * them, which sit at ev + SK_G722_QMF_HIST and od + SK_G722_QMF_HIST (the first slots take the history). */
#define SK_G722_QMF_HIST 11
#define SK_G722_QMF_BLOCK 256
void sk_g722_decode_bands(sk_g722_decoder *d, const unsigned char *in, int n, int16_t *ev, int16_t *od);
void sk_g722_synthesise(sk_g722_decoder *d, int16_t *ev, int16_t *od, int n, int16_t *pcm);
/* G.722 codes the fused decoder takes per pass (2 samples each fill the resampler's chunk), and that
 * pass from the decoded bands: c <= SK_DEC_CHUNK pairs at ev/od + SK_G722_QMF_HIST -> 24 kHz PCM16 at
 * out (returns the bytes written). */
#define SK_DEC_CHUNK (SK_RS_CHUNK / 2)
size_t sk_dec24k_bands(sk_dec24k *d, int16_t *ev, int16_t *od, int c, unsigned char *out);
/* sk_g722_decode_bands for SK_G722_LANES decoders at once, n codes each, with the same outputs. */
void sk_g722_decode_lanes(sk_g722_decoder *const d[SK_G722_LANES], const unsigned char *const in[SK_G722_LANES], int n,
                          int16_t *const ev[SK_G722_LANES], int16_t *const od[SK_G722_LANES]);
/* The same two at SIMD level 2 (AVX-512 BW), with both bands of each call in one register (g722_lanes_bw.c);
 * x86 with GCC or clang only. */
void sk_g722_code_lanes_bw(sk_g722_encoder *const e[SK_G722_LANES], const int32_t *const xl[SK_G722_LANES],
                           const int32_t *const xh[SK_G722_LANES], int n, unsigned char *const out[SK_G722_LANES]);
void sk_g722_decode_lanes_bw(sk_g722_decoder *const d[SK_G722_LANES], const unsigned char *const in[SK_G722_LANES],
                             int n, int16_t *const ev[SK_G722_LANES], int16_t *const od[SK_G722_LANES]);
