/* Streaming rational polyphase FIR resampler (L/M) for 8000, 16000 and 24000 Hz.
 *
 * Output m sits at position T = m*M on the input grid upsampled by L: it is the dot product of branch
 * (T mod L) with the K inputs starting at window index T div L. Outputs m, m+L, m+2L, ... share a
 * branch and their windows start M inputs apart, so after splitting the input into M interleaved
 * streams, tap k of all of them reads one contiguous run of floats: the loops run *across outputs*
 * (one output per SIMD lane, no horizontal sums) and every output is the same sequential sum
 * h[0]x[0] + h[1]x[1] + ... whatever the lane width or the chunking. Hence frame-by-frame equals
 * all-at-once exactly, and the SSE2 and AVX2 builds of the loop give identical bytes (multiplies and
 * adds stay separate: the build uses -ffp-contract=off, so no FMA rounding differences). The pairs the
 * media path runs every frame (8 and 16 kHz <-> 24 kHz) have hand-written AVX2 + FMA kernels below that
 * fold the linear-phase filters: exact under any chunking too, within 1 LSB of this loop.
 */
#include "sk_internal.h"
#include "sk_filters.h"

#define HIST (SK_RS_MAX_TAPS - 1)
#define OSTRIDE (SK_RS_CHUNK + 8)         /* per-branch output scratch: >= c/M + 1 outputs per branch */

#if defined(__GNUC__)
#define SK_INLINE static inline __attribute__((always_inline))
#else
#define SK_INLINE static inline
#endif

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && !defined(SK_NO_DISPATCH)
#define SK_X86_DISPATCH 1
/* -1 unknown, 0 baseline (SSE2), 1 AVX2, 2 AVX2 with AVX-512 VL and BW: 32 registers, 16-bit permutes (the
 * same results as 1) */
static int simd_level = -1;
static int have_evex; /* simd_level == 2: the kernels' copies compiled for AVX-512VL */
#endif

int sk_abi_version(void)
{
    return SK_ABI_VERSION;
}

int sk_simd_level(int request)
{
#ifdef SK_X86_DISPATCH
    __builtin_cpu_init();
    int have = __builtin_cpu_supports("avx2") ? 1 : 0;
    if (have && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512bw"))
        have = 2;
    simd_level = request < 0 ? have : (request < have ? request : have);
    have_evex = simd_level == 2;
    return simd_level;
#else
    (void)request;
    return 0;
#endif
}

int sk_simd_active(void)
{
#ifdef SK_X86_DISPATCH
    if (simd_level < 0)
        sk_simd_level(-1);
    return simd_level;
#else
    return 0;
#endif
}

int sk_resampler_init(sk_resampler *r, int from_rate, int to_rate)
{
    memset(r, 0, sizeof(*r));
    const float *coef = NULL;
    int up = 1, down = 1, taps = 1;
#define PAIR(f, t, tab)                                                                      \
    if (from_rate == f && to_rate == t) {                                                    \
        coef = &tab[0][0];                                                                   \
        up = (int)(sizeof(tab) / sizeof(tab[0]));                                            \
        taps = (int)(sizeof(tab[0]) / sizeof(tab[0][0]));                                    \
        down = up * from_rate / to_rate;                                                     \
    }
    PAIR(8000, 24000, sk_fir_8_24)
    PAIR(24000, 8000, sk_fir_24_8)
    PAIR(8000, 16000, sk_fir_8_16)
    PAIR(16000, 8000, sk_fir_16_8)
    PAIR(16000, 24000, sk_fir_16_24)
    PAIR(24000, 16000, sk_fir_24_16)
#undef PAIR
    if (coef == NULL) {
        int ok = (from_rate == 8000 || from_rate == 16000 || from_rate == 24000) && from_rate == to_rate;
        if (!ok)
            return -1;
    }
#ifdef SK_X86_DISPATCH
    if (simd_level < 0)
        sk_simd_level(-1);
#endif
    r->up = up;
    r->down = down;
    r->taps = taps;
    r->coef = coef; /* NULL: same rate, samples pass through */
    return 0;
}

void sk_resampler_reset(sk_resampler *r)
{
    r->t = 0;
    r->odd = 0;
    memset(r->buf, 0, sizeof(r->buf));
}

double sk_resampler_delay(const sk_resampler *r)
{
    if (r->coef == NULL)
        return 0.0;
    return (double)(r->up * r->taps - 1) / 2.0 / (double)r->up;
}

size_t sk_resampler_max_out(const sk_resampler *r, size_t nbytes)
{
    size_t n = (nbytes + 1) / 2 + 1;
    return 2 * (n * (size_t)r->up / (size_t)r->down + 2);
}

/* Round half to even (as the x86 vector conversion does) and saturate, without branches so the loops
 * vectorise: adding and subtracting 1.5 * 2^23 rounds any |y| < 2^22 to an integer in the FPU's default
 * mode. Outputs are below 2^17 (32768 times the filters' sum of |h|). */
SK_INLINE int16_t to_s16(float y)
{
    float v = (y + 12582912.0f) - 12582912.0f;
    v = v > 32767.0f ? 32767.0f : v;
    v = v < -32768.0f ? -32768.0f : v;
    return (int16_t)(int32_t)v;
}

/* y[j] = sum_i h[i] * X(i)[j] for j < n, summed in order of i, where X(i) is x0 + i (M = 1: all taps
 * read one stream) or xs[i] (M > 1). W outputs per pass stay in registers (W=32: four AVX2 or eight SSE
 * registers): per tap one broadcast coefficient and W/lanes loads, no horizontal sums. */
#define FIR_PASS(W, XI)                                                                          \
    for (; j + (W) <= n; j += (W)) {                                                             \
        float a[W];                                                                              \
        for (int l = 0; l < (W); l++)                                                            \
            a[l] = 0.0f;                                                                         \
        for (int i = 0; i < k; i++) {                                                            \
            const float c = h[i];                                                                \
            const float *xi = (XI) + j;                                                          \
            for (int l = 0; l < (W); l++)                                                        \
                a[l] += c * xi[l];                                                               \
        }                                                                                        \
        for (int l = 0; l < (W); l++)                                                            \
            y[j + l] = to_s16(a[l]);                                                             \
    }

/* WIDE outputs per pass: enough independent add chains to hide the add latency, few enough to stay in
 * registers (16 vector registers: 8 accumulators of 4 lanes for SSE2/NEON, 8 of 8 lanes for AVX2). */
#define FIR_LANES(WIDE)                                                                          \
    int j = 0;                                                                                   \
    FIR_PASS(WIDE, xs[i])                                                                        \
    FIR_PASS(32, xs[i])                                                                          \
    FIR_PASS(8, xs[i])                                                                           \
    FIR_PASS(1, xs[i])

static void fir_base(const float *restrict h, const float *const *restrict xs, int k, int n, int16_t *restrict y)
{
    FIR_LANES(32)
}

#ifdef SK_X86_DISPATCH
__attribute__((target("avx2"))) static void fir_avx2(const float *restrict h, const float *const *restrict xs,
                                                     int k, int n, int16_t *restrict y)
{
    FIR_LANES(64)
}
#endif

#define DSTRIDE ((HIST + SK_RS_CHUNK) / 2 + 2) /* per-stream input scratch when M >= 2 */

#ifdef SK_X86_DISPATCH
/* Hand-written AVX2 + FMA kernels for the G.711 pairs (8 kHz <-> 24 kHz, 32 taps per stream), which the
 * media code runs every 20 ms per call. Each output is one chain of fused multiply-adds in a fixed tap
 * order, the same in every lane and in the scalar tail, so the result never depends on where a chunk
 * starts or ends. FMA rounds once per tap where the baseline loop rounds twice: the two levels may
 * differ by 1 LSB (tested), each is streaming-consistent on its own. */
#include <immintrin.h>

#define SK_AVX2 __attribute__((target("avx2,fma")))
/* The same kernels compiled for AVX-512VL, when the CPU has it: the same operations and results, but 32
 * vector registers instead of 16, so fewer reloads in the 8 -> 24 kHz kernel (C loop 0.37 -> 0.35 µs
 * per frame on Zen 4). Unrolling its tap loop gained more in a C loop but lost under Python (code size). */
#define SK_EVEX __attribute__((target("avx2,fma,avx512f,avx512vl")))

/* 8 float outputs -> 8 int16: round half to even (MXCSR default), saturate in the pack. */
SK_AVX2 static inline __m128i pack8(__m256 v)
{
    __m256i i = _mm256_cvtps_epi32(v);
    return _mm_packs_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
}

SK_AVX2 static inline int16_t pack1(__m128 v)
{
    int y = _mm_cvtss_si32(v);
    return (int16_t)(y > 32767 ? 32767 : (y < -32768 ? -32768 : y));
}

/* a, b, c hold branches 0, 1, 2 of inputs j..j+7: out[3j'+b] for the 24 outputs, in order. */
SK_AVX2 static inline void store3(int16_t *out, __m256 a, __m256 b, __m256 c)
{
    const __m256i ia = _mm256_setr_epi32(0, 3, 6, 1, 4, 7, 2, 5);
    const __m256i ib = _mm256_setr_epi32(5, 0, 3, 6, 1, 4, 7, 2);
    const __m256i ic = _mm256_setr_epi32(2, 5, 0, 3, 6, 1, 4, 7);
    __m256 pa = _mm256_permutevar8x32_ps(a, ia), pb = _mm256_permutevar8x32_ps(b, ib);
    __m256 pc = _mm256_permutevar8x32_ps(c, ic);
    /* position p of output vector k takes branch (8k + p) mod 3 */
    __m256 o0 = _mm256_blend_ps(_mm256_blend_ps(pa, pb, 0x92), pc, 0x24);
    __m256 o1 = _mm256_blend_ps(_mm256_blend_ps(pa, pb, 0x24), pc, 0x49);
    __m256 o2 = _mm256_blend_ps(_mm256_blend_ps(pa, pb, 0x49), pc, 0x92);
    _mm_storeu_si128((__m128i *)out, pack8(o0));
    _mm_storeu_si128((__m128i *)(out + 8), pack8(o1));
    _mm_storeu_si128((__m128i *)(out + 16), pack8(o2));
}

/* The 24 consecutive samples in v0, v1, v2 → eight of each stream: s_r[k] = sample 3k + r. Six blends and
 * three permutes; the inverse of store3. */
SK_AVX2 static inline void unzip3(__m256 v0, __m256 v1, __m256 v2, float *s0, float *s1, float *s2)
{
    const __m256i idx0 = _mm256_setr_epi32(0, 3, 6, 1, 4, 7, 2, 5); /* its own inverse */
    const __m256i idx1 = _mm256_setr_epi32(1, 4, 7, 2, 5, 0, 3, 6); /* inverse of store3's ib */
    const __m256i idx2 = _mm256_setr_epi32(2, 5, 0, 3, 6, 1, 4, 7); /* inverse of store3's ic */
    __m256 a = _mm256_blend_ps(_mm256_blend_ps(v0, v1, 0x92), v2, 0x24);
    __m256 b = _mm256_blend_ps(_mm256_blend_ps(v0, v1, 0x24), v2, 0x49);
    __m256 c = _mm256_blend_ps(_mm256_blend_ps(v0, v1, 0x49), v2, 0x92);
    _mm256_storeu_ps(s0, _mm256_permutevar8x32_ps(a, idx0));
    _mm256_storeu_ps(s1, _mm256_permutevar8x32_ps(b, idx1));
    _mm256_storeu_ps(s2, _mm256_permutevar8x32_ps(c, idx2));
}

/* s_r[i] = w[3i + r] for i < n. */
SK_AVX2 static void split3(const float *w, int n, float *s0, float *s1, float *s2)
{
    int i = 0;
    for (; i + 8 <= n; i += 8)
        unzip3(_mm256_loadu_ps(w + 3 * i), _mm256_loadu_ps(w + 3 * i + 8), _mm256_loadu_ps(w + 3 * i + 16),
               s0 + i, s1 + i, s2 + i);
    for (; i < n; i++) {
        s0[i] = w[3 * i];
        s1[i] = w[3 * i + 1];
        s2[i] = w[3 * i + 2];
    }
}

/* L = 3, M = 1, K = 32: out[3j + b] = sum_i h_b[i] z[j + i] for j < c. Linear phase makes h_2 the
 * mirror of h_0 and h_1 a palindrome, so with S_i = z[j+i] + z[j+31-i] and D_i = z[j+i] - z[j+31-i]:
 * out_1 = sum h_1[i] S_i, out_0 + out_2 = sum (h_0 + h_2)[i] S_i, out_0 - out_2 = sum (h_0 - h_2)[i] D_i
 * over i < 16: half the multiply-adds (the adds run on the FPU's separate add pipes). */
#define UP3_TAP(v)                                                                               \
    do {                                                                                         \
        const __m256 xl = _mm256_loadu_ps(x + 8 * (v) + i), xr = _mm256_loadu_ps(x + 8 * (v) + 31 - i); \
        const __m256 sv = _mm256_add_ps(xl, xr), dv = _mm256_sub_ps(xl, xr);                    \
        p##v = _mm256_fmadd_ps(gp, sv, p##v);                                                    \
        m##v = _mm256_fmadd_ps(gm, dv, m##v);                                                    \
        b##v = _mm256_fmadd_ps(g1, sv, b##v);                                                    \
    } while (0)
/* Tap order of every output's chains: 0, 8, 1, 9, ..., 7, 15, so that in the 24-output block taps i and
 * i + 8 of three vectors 8 outputs apart read 8 distinct windows instead of 12. */
#define UP3_ORDER(t) (((t) >> 1) + 8 * ((t) & 1))
#define UP3_PAIR(v, xl, xr)                                                                      \
    do {                                                                                         \
        const __m256 sv = _mm256_add_ps(xl, xr), dv = _mm256_sub_ps(xl, xr);                    \
        p##v = _mm256_fmadd_ps(gp, sv, p##v);                                                    \
        m##v = _mm256_fmadd_ps(gm, dv, m##v);                                                    \
        b##v = _mm256_fmadd_ps(g1, sv, b##v);                                                    \
    } while (0)
#define UP3_OUT(v, dst)                                                                          \
    store3(dst, _mm256_mul_ps(_mm256_add_ps(p##v, m##v), half), b##v,                            \
           _mm256_mul_ps(_mm256_sub_ps(p##v, m##v), half))

SK_AVX2 SK_INLINE void up3_body(const float *h, const float *z, int c, int16_t *out)
{
    float hp[16], hm[16];
    for (int i = 0; i < 16; i++) {
        hp[i] = h[i] + h[64 + i];
        hm[i] = h[i] - h[64 + i];
    }
    const float *h1 = h + 32;
    const __m256 half = _mm256_set1_ps(0.5f);
    int j = 0;
    for (; j + 24 <= c; j += 24) {
        __m256 p0 = _mm256_setzero_ps(), p1 = p0, p2 = p0, m0 = p0, m1 = p0, m2 = p0, b0 = p0, b1 = p0, b2 = p0;
        const float *x = z + j;
        for (int i0 = 0; i0 < 8; i0++) { /* taps i0 and i0 + 8 share their loads across vectors */
            const __m256 l0 = _mm256_loadu_ps(x + i0), l1 = _mm256_loadu_ps(x + 8 + i0);
            const __m256 l2 = _mm256_loadu_ps(x + 16 + i0), l3 = _mm256_loadu_ps(x + 24 + i0);
            const __m256 r0 = _mm256_loadu_ps(x + 23 - i0), r1 = _mm256_loadu_ps(x + 31 - i0);
            const __m256 r2 = _mm256_loadu_ps(x + 39 - i0), r3 = _mm256_loadu_ps(x + 47 - i0);
            __m256 gp = _mm256_broadcast_ss(hp + i0), gm = _mm256_broadcast_ss(hm + i0);
            __m256 g1 = _mm256_broadcast_ss(h1 + i0);
            UP3_PAIR(0, l0, r1);
            UP3_PAIR(1, l1, r2);
            UP3_PAIR(2, l2, r3);
            gp = _mm256_broadcast_ss(hp + i0 + 8), gm = _mm256_broadcast_ss(hm + i0 + 8);
            g1 = _mm256_broadcast_ss(h1 + i0 + 8);
            UP3_PAIR(0, l1, r0);
            UP3_PAIR(1, l2, r1);
            UP3_PAIR(2, l3, r2);
        }
        UP3_OUT(0, out + 3 * j);
        UP3_OUT(1, out + 3 * j + 24);
        UP3_OUT(2, out + 3 * j + 48);
    }
    for (; j + 8 <= c; j += 8) {
        __m256 p0 = _mm256_setzero_ps(), m0 = p0, b0 = p0;
        const float *x = z + j;
        for (int t = 0; t < 16; t++) {
            const int i = UP3_ORDER(t);
            const __m256 gp = _mm256_broadcast_ss(hp + i), gm = _mm256_broadcast_ss(hm + i);
            const __m256 g1 = _mm256_broadcast_ss(h1 + i);
            UP3_TAP(0);
        }
        UP3_OUT(0, out + 3 * j);
    }
    for (; j < c; j++) { /* the same operations, one lane */
        __m128 p = _mm_setzero_ps(), m = p, b = p;
        for (int t = 0; t < 16; t++) {
            const int i = UP3_ORDER(t);
            const __m128 xl = _mm_set_ss(z[j + i]), xr = _mm_set_ss(z[j + 31 - i]);
            p = _mm_fmadd_ss(_mm_set_ss(hp[i]), _mm_add_ss(xl, xr), p);
            m = _mm_fmadd_ss(_mm_set_ss(hm[i]), _mm_sub_ss(xl, xr), m);
            b = _mm_fmadd_ss(_mm_set_ss(h1[i]), _mm_add_ss(xl, xr), b);
        }
        out[3 * j] = pack1(_mm_mul_ss(_mm_add_ss(p, m), _mm_set_ss(0.5f)));
        out[3 * j + 1] = pack1(b);
        out[3 * j + 2] = pack1(_mm_mul_ss(_mm_sub_ss(p, m), _mm_set_ss(0.5f)));
    }
}

/* 8 rounded, int16-saturated outputs (as int32 lanes) -> 8 G.711 codes: the same arithmetic as
 * sk_ulaw_from_linear / sk_alaw_from_linear in sk_internal.h, eight lanes at a time. */
SK_AVX2 static inline __m256i top_bits8(__m256i v)
{
    return _mm256_srli_epi32(_mm256_castps_si256(_mm256_cvtepi32_ps(v)), 19);
}

SK_AVX2 static inline __m256i ulaw8(__m256i x)
{
    __m256i v = _mm256_srai_epi32(x, 2);
    __m256i neg = _mm256_srai_epi32(v, 31); /* all ones when negative */
    __m256i mask = _mm256_xor_si256(_mm256_set1_epi32(0xFF), _mm256_and_si256(neg, _mm256_set1_epi32(0x80)));
    v = _mm256_add_epi32(_mm256_min_epi32(_mm256_abs_epi32(v), _mm256_set1_epi32(8158)), _mm256_set1_epi32(33));
    return _mm256_xor_si256(_mm256_sub_epi32(top_bits8(v), _mm256_set1_epi32((127 + 5) << 4)), mask);
}

SK_AVX2 static inline __m256i alaw8(__m256i x)
{
    __m256i v = _mm256_srai_epi32(x, 3);
    __m256i neg = _mm256_srai_epi32(v, 31);
    __m256i mask = _mm256_xor_si256(_mm256_set1_epi32(0xD5), _mm256_and_si256(neg, _mm256_set1_epi32(0x80)));
    v = _mm256_xor_si256(v, neg); /* -v - 1 when negative */
    __m256i top = _mm256_sub_epi32(top_bits8(v), _mm256_set1_epi32((127 + 4) << 4));
    __m256i seg0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(32), v);
    return _mm256_xor_si256(_mm256_blendv_epi8(top, _mm256_srli_epi32(v, 1), seg0), mask);
}

#define OUT_S16 SK_OUT_S16
#define OUT_ULAW SK_OUT_ULAW
#define OUT_ALAW SK_OUT_ALAW

SK_AVX2 static inline void emit8(void *out, int m, __m256 y, int mode)
{
    __m256i i = _mm256_cvtps_epi32(y);
    if (mode == OUT_S16) {
        _mm_storeu_si128((__m128i *)((int16_t *)out + m),
                         _mm_packs_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1)));
        return;
    }
    i = _mm256_max_epi32(_mm256_min_epi32(i, _mm256_set1_epi32(32767)), _mm256_set1_epi32(-32768));
    __m256i c = mode == OUT_ULAW ? ulaw8(i) : alaw8(i);
    __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
    _mm_storel_epi64((__m128i *)((unsigned char *)out + m), _mm_packus_epi16(w, w));
}

SK_AVX2 static inline void emit1(void *out, int m, __m128 y, int mode)
{
    int16_t v = pack1(y);
    if (mode == OUT_S16)
        ((int16_t *)out)[m] = v;
    else
        ((unsigned char *)out)[m] = mode == OUT_ULAW ? sk_ulaw_from_linear(v) : sk_alaw_from_linear(v);
}

/* L = 1, M = 3, K = 96: out[m] = sum_i h[i] w[3m + i], with the window split into three streams
 * s_r[n] = w[3n + r], so tap i = 3q + r reads s_r[m + q]. The filter is symmetric (h[i] = h[95 - i]) and
 * tap 95 - i = 3(31 - q) + (2 - r) reads s_(2-r)[m + 31 - q]: one multiply-add per pair of taps on the
 * (exact) sum of the two inputs, 48 instead of 96. Two chains per output: A sums the pairs of streams
 * 0 and 2 (q < 32), B those of stream 1 with itself (q < 16), y = A + B; within a chain the terms go in
 * the order q = 8a + b over (b, a). For a fixed b the loads of J output vectors overlap across a. */
#define DOWN3_BLOCK(J)                                                                           \
    for (; m + 8 * (J) <= n; m += 8 * (J)) {                                                      \
        __m256 A[J], B[J];                                                                       \
        for (int v = 0; v < (J); v++)                                                            \
            A[v] = B[v] = _mm256_setzero_ps();                                                   \
        const float *s0 = s[0] + m, *s1 = s[1] + m, *s2 = s[2] + m;                              \
        for (int b = 0; b < 8; b++) {                                                            \
            _Pragma("GCC unroll 4")                                                              \
            for (int a = 0; a < 4; a++) {                                                        \
                const __m256 g = _mm256_broadcast_ss(h + 3 * (8 * a + b));                       \
                _Pragma("GCC unroll 8")                                                          \
                for (int v = 0; v < (J); v++) {                                                  \
                    const __m256 x = _mm256_add_ps(_mm256_loadu_ps(s0 + 8 * (v + a) + b),         \
                                                   _mm256_loadu_ps(s2 + 8 * (v + 3 - a) + 7 - b)); \
                    A[v] = _mm256_fmadd_ps(g, x, A[v]);                                          \
                }                                                                                \
            }                                                                                    \
            _Pragma("GCC unroll 2")                                                              \
            for (int a = 0; a < 2; a++) {                                                        \
                const __m256 g = _mm256_broadcast_ss(h + 3 * (8 * a + b) + 1);                   \
                _Pragma("GCC unroll 8")                                                          \
                for (int v = 0; v < (J); v++) {                                                  \
                    const __m256 x = _mm256_add_ps(_mm256_loadu_ps(s1 + 8 * (v + a) + b),         \
                                                   _mm256_loadu_ps(s1 + 8 * (v + 3 - a) + 7 - b)); \
                    B[v] = _mm256_fmadd_ps(g, x, B[v]);                                          \
                }                                                                                \
            }                                                                                    \
        }                                                                                        \
        for (int v = 0; v < (J); v++)                                                            \
            emit8(out, m + 8 * v, _mm256_add_ps(A[v], B[v]), mode);                              \
    }

SK_AVX2 SK_INLINE void down3_sym(const float *h, const float *const s[3], int n, void *out, int mode)
{
    int m = 0;
    DOWN3_BLOCK(4)
    DOWN3_BLOCK(1)
    for (; m < n; m++) { /* the same operations, one lane */
        __m128 A = _mm_setzero_ps(), B = A;
        for (int b = 0; b < 8; b++) {
            for (int a = 0; a < 4; a++) {
                const int q = 8 * a + b;
                A = _mm_fmadd_ss(_mm_set_ss(h[3 * q]), _mm_add_ss(_mm_set_ss(s[0][m + q]), _mm_set_ss(s[2][m + 31 - q])), A);
            }
            for (int a = 0; a < 2; a++) {
                const int q = 8 * a + b;
                B = _mm_fmadd_ss(_mm_set_ss(h[3 * q + 1]), _mm_add_ss(_mm_set_ss(s[1][m + q]), _mm_set_ss(s[1][m + 31 - q])), B);
            }
        }
        emit1(out, m, _mm_add_ss(A, B), mode);
    }
}

/* The G.722 pairs (16 kHz <-> 24 kHz), folded like the G.711 ones: both prototypes are linear phase, so
 * one branch is another's mirror and a pair of outputs shares one pass over the window's symmetric sums
 * (half the multiplies of the unfolded loop, each fused with its add; rounded to PCM16 as the G.711 ones).
 * Every output has one formula fixed by its branch and window alone, computed the same way in a vector
 * lane or on its own: the chunking never changes an output, whatever the resampler's phase t0. */

/* L = 3, M = 2, K = 64. Output o sits at t = t0 + 2o: branch t mod 3, window z[s..s+63] with s = t div 3.
 * Branch 2 is branch 0 mirrored and branch 1 a palindrome: with S_i = z[s+i] + z[s+63-i] and
 * D_i = z[s+i] - z[s+63-i] (i < 32), P = sum (h_0 + h_2)[i] S_i and M = sum (h_0 - h_2)[i] D_i, branch 0
 * at s is (P + M) / 2, branch 2 at s is (P - M) / 2 and branch 1 at s is sum h_1[i] S_i. Outputs come in
 * triples (branch 0 at s, branch 2 at s, branch 1 at s + 1), triple j + 1 two samples on: eight triples
 * per vector read the even and odd streams E[n] = z[s+2n], O[n] = z[s+2n+1]. */
typedef struct {
    float p[32], m[32];
    const float *b1;
} hd_up_taps;

SK_AVX2 static inline float hd_up_one(const hd_up_taps *g, const float *z, int t)
{
    const int branch = t % 3, s = t / 3;
    __m128 p = _mm_setzero_ps(), m = p;
    if (branch == 1) {
        for (int i = 0; i < 32; i++)
            p = _mm_fmadd_ss(_mm_set_ss(g->b1[i]), _mm_add_ss(_mm_set_ss(z[s + i]), _mm_set_ss(z[s + 63 - i])), p);
        return _mm_cvtss_f32(p);
    }
    for (int i = 0; i < 32; i++) {
        const __m128 x = _mm_set_ss(z[s + i]), y = _mm_set_ss(z[s + 63 - i]);
        p = _mm_fmadd_ss(_mm_set_ss(g->p[i]), _mm_add_ss(x, y), p);
        m = _mm_fmadd_ss(_mm_set_ss(g->m[i]), _mm_sub_ss(x, y), m);
    }
    const __m128 y = branch == 0 ? _mm_add_ss(p, m) : _mm_sub_ss(p, m);
    return _mm_cvtss_f32(_mm_mul_ss(y, _mm_set_ss(0.5f)));
}

/* Taps i (even) and i + 1 of J vectors of triples from stream index j: z[s+2j+i] is E[j+i/2] for even i and
 * O[j+i/2] for odd, its mirror z[s+2j+63-i] the other stream at j+31-i/2 (branch 1, one sample on, the
 * same with the streams swapped). store3 lays out a triple as outputs 3j, 3j+1, 3j+2: branches 0, 2, 1. */
#define HD_UP_BLOCK(J)                                                                                  \
    for (; j + 8 * (J) <= g; j += 8 * (J)) {                                                           \
        __m256 P[J], M[J], B[J];                                                                       \
        for (int v = 0; v < (J); v++)                                                                  \
            P[v] = M[v] = B[v] = _mm256_setzero_ps();                                                  \
        for (int i = 0; i < 32; i += 2) {                                                              \
            const __m256 gp0 = _mm256_broadcast_ss(t->p + i), gm0 = _mm256_broadcast_ss(t->m + i);      \
            const __m256 gb0 = _mm256_broadcast_ss(t->b1 + i);                                        \
            const __m256 gp1 = _mm256_broadcast_ss(t->p + i + 1), gm1 = _mm256_broadcast_ss(t->m + i + 1); \
            const __m256 gb1 = _mm256_broadcast_ss(t->b1 + i + 1);                                    \
            _Pragma("GCC unroll 4") for (int v = 0; v < (J); v++)                                       \
            {                                                                                          \
                const float *e = ev + j + 8 * v, *o = od + j + 8 * v;                                  \
                __m256 x = _mm256_loadu_ps(e + i / 2), y = _mm256_loadu_ps(o + 31 - i / 2);             \
                P[v] = _mm256_fmadd_ps(gp0, _mm256_add_ps(x, y), P[v]);                               \
                M[v] = _mm256_fmadd_ps(gm0, _mm256_sub_ps(x, y), M[v]);                               \
                B[v] = _mm256_fmadd_ps(gb0, _mm256_add_ps(_mm256_loadu_ps(o + i / 2),                 \
                                                          _mm256_loadu_ps(e + 32 - i / 2)), B[v]);    \
                x = _mm256_loadu_ps(o + i / 2), y = _mm256_loadu_ps(e + 31 - i / 2);                   \
                P[v] = _mm256_fmadd_ps(gp1, _mm256_add_ps(x, y), P[v]);                               \
                M[v] = _mm256_fmadd_ps(gm1, _mm256_sub_ps(x, y), M[v]);                               \
                B[v] = _mm256_fmadd_ps(gb1, _mm256_add_ps(_mm256_loadu_ps(e + i / 2 + 1),             \
                                                          _mm256_loadu_ps(o + 31 - i / 2)), B[v]);    \
            }                                                                                          \
        }                                                                                              \
        for (int v = 0; v < (J); v++)                                                                  \
            store3(out + 3 * (j + 8 * v), _mm256_mul_ps(_mm256_add_ps(P[v], M[v]), half),             \
                   _mm256_mul_ps(_mm256_sub_ps(P[v], M[v]), half), B[v]);                              \
    }

/* s0[i] = w[2i] for i < n0, s1[i] = w[2i + 1] for i < n1 (n1 <= n0). */
SK_AVX2 static inline void split2(const float *w, int n0, int n1, float *s0, float *s1)
{
    int i = 0;
    for (; i + 8 <= n1; i += 8) {
        const __m256 a = _mm256_loadu_ps(w + 2 * i), b = _mm256_loadu_ps(w + 2 * i + 8);
        const __m256 e = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0)); /* w0 w2 w8 w10 | w4 w6 w12 w14 */
        const __m256 o = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
        _mm256_storeu_ps(s0 + i, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), 0xD8)));
        _mm256_storeu_ps(s1 + i, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(o), 0xD8)));
    }
    for (int k = i; k < n0; k++)
        s0[k] = w[2 * k];
    for (int k = i; k < n1; k++)
        s1[k] = w[2 * k + 1];
}

SK_AVX2 SK_INLINE void hd_up_body(const float *h, const float *z, int t0, int n_out, int16_t *out)
{
    hd_up_taps taps, *const t = &taps;
    for (int i = 0; i < 32; i++) {
        taps.p[i] = h[i] + h[128 + i];
        taps.m[i] = h[i] - h[128 + i];
    }
    taps.b1 = h + 64;
    const __m256 half = _mm256_set1_ps(0.5f);
    int o = 0;
    for (; o < n_out && (t0 + 2 * o) % 3 != 0; o++) /* up to the first triple */
        out[o] = pack1(_mm_set_ss(hd_up_one(t, z, t0 + 2 * o)));
    const int g = (n_out - o) / 3 / 8 * 8; /* triples in whole vectors */
    if (g > 0) {
        float ev[DSTRIDE], od[DSTRIDE];
        split2(z + (t0 + 2 * o) / 3, g + 32, g + 31, ev, od);
        out += o;
        int j = 0;
        HD_UP_BLOCK(4)
        HD_UP_BLOCK(1)
        out -= o;
        o += 3 * g;
    }
    for (; o < n_out; o++)
        out[o] = pack1(_mm_set_ss(hd_up_one(t, z, t0 + 2 * o)));
}

/* L = 2, M = 3, K = 96. Output o sits at t = t0 + 3o: branch t mod 2, window z[s..s+95] with s = t div 2.
 * Branch 1 is branch 0 mirrored, so branch 0 at s (A) and branch 1 at s + 1 (B, the next output) weigh
 * z[s+u] and z[s+96-u] alike: past their ends (u = 0: A's z[s], B's z[s+96]), A + B = P and A - B = M with
 * P = sum (h_0[u] + h_0[96-u]) S_u and M = sum (h_0[u] - h_0[96-u]) D_u over 1 <= u <= 48 (S_u and D_u
 * as above, z[s+u] +- z[s+96-u]; D_48 = 0), so A = (P + M) / 2 + h_0[0] z[s] and B = (P - M) / 2 +
 * h_0[0] z[s+96]: each output reads its own window only. Pair j + 1 starts three samples on: eight pairs
 * per vector read the streams T_r[n] = z[s+3n+r]. */
typedef struct {
    float p[49], m[48], h0; /* p[u], m[u] for u >= 1 */
} hd_down_taps;

SK_AVX2 static inline float hd_down_one(const hd_down_taps *g, const float *z, int t)
{
    const int branch = t & 1, s = t / 2 - branch; /* the pair's window: branch 1 is its second output */
    __m128 p = _mm_setzero_ps(), m = p;
    for (int u = 1; u < 48; u++) {
        const __m128 x = _mm_set_ss(z[s + u]), y = _mm_set_ss(z[s + 96 - u]);
        p = _mm_fmadd_ss(_mm_set_ss(g->p[u]), _mm_add_ss(x, y), p);
        m = _mm_fmadd_ss(_mm_set_ss(g->m[u]), _mm_sub_ss(x, y), m);
    }
    const __m128 c = _mm_set_ss(z[s + 48]);
    p = _mm_fmadd_ss(_mm_set_ss(g->p[48]), _mm_add_ss(c, c), p);
    const __m128 half = _mm_set_ss(0.5f), h0 = _mm_set_ss(g->h0);
    if (branch == 0)
        return _mm_cvtss_f32(_mm_fmadd_ss(h0, _mm_set_ss(z[s]), _mm_mul_ss(_mm_add_ss(p, m), half)));
    return _mm_cvtss_f32(_mm_fmadd_ss(h0, _mm_set_ss(z[s + 96]), _mm_mul_ss(_mm_sub_ss(p, m), half)));
}

/* Tap u of J vectors of pairs from stream index j: x = z[s+u] from XS[XI], y = z[s+96-u] from YS[YI]. */
#define HD_DOWN_TAP(U, XS, XI, YS, YI)                                                                 \
    do {                                                                                               \
        const __m256 gp = _mm256_broadcast_ss(t->p + (U)), gm = _mm256_broadcast_ss(t->m + (U));       \
        _Pragma("GCC unroll 4") for (int v = 0; v < (J_); v++)                                          \
        {                                                                                              \
            const __m256 x = _mm256_loadu_ps((XS) + j + 8 * v + (XI));                                 \
            const __m256 y = _mm256_loadu_ps((YS) + j + 8 * v + (YI));                                 \
            P[v] = _mm256_fmadd_ps(gp, _mm256_add_ps(x, y), P[v]);                                    \
            M[v] = _mm256_fmadd_ps(gm, _mm256_sub_ps(x, y), M[v]);                                    \
        }                                                                                              \
    } while (0)
/* u = 3q + 1, 3q + 2, 3q + 3 in turn: T_1[q] with T_2[31-q], T_2[q] with T_1[31-q], T_0[q+1] with T_0[31-q]. */
#define HD_DOWN_BLOCK(J)                                                                                \
    for (; j + 8 * (J) <= g; j += 8 * (J)) {                                                           \
        enum { J_ = (J) };                                                                             \
        __m256 P[J], M[J];                                                                             \
        for (int v = 0; v < (J); v++)                                                                  \
            P[v] = M[v] = _mm256_setzero_ps();                                                         \
        for (int q = 0; q < 16; q++) {                                                                 \
            HD_DOWN_TAP(3 * q + 1, s1, q, s2, 31 - q);                                                 \
            HD_DOWN_TAP(3 * q + 2, s2, q, s1, 31 - q);                                                 \
            if (q < 15)                                                                                \
                HD_DOWN_TAP(3 * q + 3, s0, q + 1, s0, 31 - q);                                         \
        }                                                                                              \
        const __m256 g48 = _mm256_broadcast_ss(t->p + 48), h0 = _mm256_broadcast_ss(&t->h0);           \
        for (int v = 0; v < (J); v++) {                                                                \
            const float *x0 = s0 + j + 8 * v;                                                          \
            const __m256 c = _mm256_loadu_ps(x0 + 16);                                                 \
            P[v] = _mm256_fmadd_ps(g48, _mm256_add_ps(c, c), P[v]);                                   \
            const __m256 a = _mm256_fmadd_ps(h0, _mm256_loadu_ps(x0), _mm256_mul_ps(_mm256_add_ps(P[v], M[v]), half)); \
            const __m256 b = _mm256_fmadd_ps(h0, _mm256_loadu_ps(x0 + 32), _mm256_mul_ps(_mm256_sub_ps(P[v], M[v]), half)); \
            const __m256 lo = _mm256_unpacklo_ps(a, b), hi = _mm256_unpackhi_ps(a, b);                 \
            _mm_storeu_si128((__m128i *)(out + 2 * (j + 8 * v)), pack8(_mm256_permute2f128_ps(lo, hi, 0x20))); \
            _mm_storeu_si128((__m128i *)(out + 2 * (j + 8 * v) + 8), pack8(_mm256_permute2f128_ps(lo, hi, 0x31))); \
        }                                                                                              \
    }

SK_AVX2 SK_INLINE void hd_down_body(const float *h, const float *z, int t0, int n_out, int16_t *out)
{
    hd_down_taps taps, *const t = &taps;
    for (int u = 1; u < 48; u++) {
        taps.p[u] = h[u] + h[96 - u];
        taps.m[u] = h[u] - h[96 - u];
    }
    taps.p[0] = taps.m[0] = 0.0f; /* unused */
    taps.p[48] = h[48];
    taps.h0 = h[0];
    const __m256 half = _mm256_set1_ps(0.5f);
    int o = 0;
    for (; o < n_out && ((t0 + 3 * o) & 1); o++) /* up to the first pair */
        out[o] = pack1(_mm_set_ss(hd_down_one(t, z, t0 + 3 * o)));
    const int g = (n_out - o) / 2 / 8 * 8; /* pairs in whole vectors */
    if (g > 0) {
        float streams[3 * DSTRIDE];
        float *const s0 = streams, *const s1 = streams + DSTRIDE, *const s2 = streams + 2 * DSTRIDE;
        const float *w = z + (t0 + 3 * o) / 2;
        split3(w, g + 31, s0, s1, s2);
        s0[g + 31] = w[3 * (g + 31)];
        out += o;
        int j = 0;
        HD_DOWN_BLOCK(4)
        HD_DOWN_BLOCK(1)
        out -= o;
        o += 2 * g;
    }
    for (; o < n_out; o++)
        out[o] = pack1(_mm_set_ss(hd_down_one(t, z, t0 + 3 * o)));
}

/* One copy of each kernel per instruction set: [0] AVX2 + FMA, [1] the same with AVX-512VL registers. */
#define SK_KERNELS(ATTR, SUF)                                                                    \
    ATTR static void up3_##SUF(const float *h, const float *z, int c, int16_t *out)              \
    {                                                                                            \
        up3_body(h, z, c, out);                                                                  \
    }                                                                                            \
    ATTR static void down3_s16_##SUF(const float *h, const float *const s[3], int n, void *out)  \
    {                                                                                            \
        down3_sym(h, s, n, out, OUT_S16);                                                        \
    }                                                                                            \
    ATTR static void down3_ulaw_##SUF(const float *h, const float *const s[3], int n, void *out) \
    {                                                                                            \
        down3_sym(h, s, n, out, OUT_ULAW);                                                       \
    }                                                                                            \
    ATTR static void down3_alaw_##SUF(const float *h, const float *const s[3], int n, void *out) \
    {                                                                                            \
        down3_sym(h, s, n, out, OUT_ALAW);                                                       \
    }                                                                                            \
    ATTR static void hd_up_##SUF(const float *h, const float *z, int t0, int n, int16_t *out)      \
    {                                                                                            \
        hd_up_body(h, z, t0, n, out);                                                            \
    }                                                                                            \
    ATTR static void hd_down_##SUF(const float *h, const float *z, int t0, int n, int16_t *out)    \
    {                                                                                            \
        hd_down_body(h, z, t0, n, out);                                                          \
    }
SK_KERNELS(SK_AVX2, avx2)
SK_KERNELS(SK_EVEX, evex)

typedef void up3_fn(const float *, const float *, int, int16_t *);
typedef void down3_fn(const float *, const float *const[3], int, void *);
static up3_fn *const up3_k32[2] = {up3_avx2, up3_evex};
typedef void hd_fn(const float *, const float *, int, int, int16_t *);
static hd_fn *const hd_up_k[2] = {hd_up_avx2, hd_up_evex}, *const hd_down_k[2] = {hd_down_avx2, hd_down_evex};
static down3_fn *const down3_k32[2][3] = {{down3_s16_avx2, down3_ulaw_avx2, down3_alaw_avx2},
                                          {down3_s16_evex, down3_ulaw_evex, down3_alaw_evex}};
#endif


/* The body of sk_rs_commit for every path but the AVX2 24 kHz -> 8 kHz one (PCM16 out). */
static size_t commit_s16(sk_resampler *r, int c, int16_t *out)
{
    const int up = r->up, down = r->down, k = r->taps;
    const float *z = r->buf + (HIST - (k - 1)); /* window index 0: K-1 history samples, then c new ones */
    const int t0 = r->t, total = k - 1 + c;
    const int n_out = c * up > t0 ? (c * up - t0 + down - 1) / down : 0;
    float streams[3 * DSTRIDE];
    int16_t y[3 * OSTRIDE];
    const float *x[SK_RS_MAX_TAPS];

#ifdef SK_X86_DISPATCH
    if (simd_level > 0 && k == 32 && up == 3 && down == 1 && t0 == 0) { /* 8 kHz -> 24 kHz */
        up3_k32[have_evex](r->coef, z, c, out);
        goto done;
    }
    if (simd_level > 0 && k == 64 && up == 3 && down == 2) { /* 16 kHz -> 24 kHz */
        hd_up_k[have_evex](r->coef, z, t0, n_out, out);
        goto done;
    }
    if (simd_level > 0 && k == 96 && up == 2 && down == 3) { /* 24 kHz -> 16 kHz */
        hd_down_k[have_evex](r->coef, z, t0, n_out, out);
        goto done;
    }
#endif
    if (down > 1) { /* split the window into M streams: stream s holds z[M*i + s] */
        const int groups = total / down;
        float *s0 = streams, *s1 = streams + DSTRIDE, *s2 = streams + 2 * DSTRIDE;
        if (down == 2) {
            for (int i = 0; i < groups; i++) {
                s0[i] = z[2 * i];
                s1[i] = z[2 * i + 1];
            }
        } else {
            for (int i = 0; i < groups; i++) {
                s0[i] = z[3 * i];
                s1[i] = z[3 * i + 1];
                s2[i] = z[3 * i + 2];
            }
        }
        for (int q = groups * down, s = 0; q < total; q++, s++) /* the incomplete last group */
            streams[s * DSTRIDE + groups] = z[q];
    }
    const float *const base[3] = {down > 1 ? streams : z, streams + DSTRIDE, streams + 2 * DSTRIDE};
    const int branches = n_out < up ? n_out : up;
    for (int b = 0; b < branches; b++) { /* outputs b, b+L, b+2L, ... of this chunk */
        const int tb = t0 + b * down, start = tb / up, phase = tb % up;
        const int nb = (n_out - b + up - 1) / up;
        /* tap i reads z[start + i + M*j] = stream s from idx, stepped without a division per tap */
        unsigned s = (unsigned)(start % down), idx = (unsigned)(start / down);
        for (int i = 0; i < k; i++) {
            x[i] = base[s] + idx;
            s++;
            idx += s == (unsigned)down;
            s = s == (unsigned)down ? 0 : s;
        }
        const float *h = r->coef + (size_t)phase * (size_t)k;
        int16_t *dst = up == 1 ? out : y + b * OSTRIDE; /* L = 1: straight into place */
#ifdef SK_X86_DISPATCH
        if (simd_level > 0)
            fir_avx2(h, x, k, nb, dst);
        else
#endif
            fir_base(h, x, k, nb, dst);
    }
    if (up == 3 && branches == 3) { /* interleave the branches: output b + L*j */
        const int n0 = n_out / 3;
        const int16_t *y0 = y, *y1 = y + OSTRIDE, *y2 = y + 2 * OSTRIDE;
        for (int j = 0; j < n0; j++) {
            out[3 * j] = y0[j];
            out[3 * j + 1] = y1[j];
            out[3 * j + 2] = y2[j];
        }
        for (int o = 3 * n0; o < n_out; o++)
            out[o] = y[(o - 3 * n0) * OSTRIDE + n0];
    } else if (up == 2 && branches == 2) {
        const int n0 = n_out / 2;
        const int16_t *y0 = y, *y1 = y + OSTRIDE;
        for (int j = 0; j < n0; j++) {
            out[2 * j] = y0[j];
            out[2 * j + 1] = y1[j];
        }
        if (n_out & 1)
            out[n_out - 1] = y0[n0];
    } else if (up > 1) {
        for (int b = 0; b < branches; b++) {
            const int16_t *yb = y + b * OSTRIDE;
            const int nb = (n_out - b + up - 1) / up;
            for (int j = 0; j < nb; j++)
                out[b + up * j] = yb[j];
        }
    }
#ifdef SK_X86_DISPATCH
done:
#endif
    r->t = t0 + n_out * down - c * up;
    memmove(r->buf + (HIST - (k - 1)), z + c, (size_t)(k - 1) * sizeof(float));
    return (size_t)n_out;
}

static int is_down3_avx2(const sk_resampler *r)
{
#ifdef SK_X86_DISPATCH
    return simd_level > 0 && r->taps == 96 && r->up == 1 && r->down == 3;
#else
    (void)r;
    return 0;
#endif
}

size_t sk_rs_commit_to(sk_resampler *r, int c, void *out, int mode)
{
#ifdef SK_X86_DISPATCH
    if (is_down3_avx2(r)) { /* 24 kHz -> 8 kHz */
        const int k = 96, t0 = r->t;
        const float *z = r->buf + (HIST - (k - 1));
        const int n_out = c > t0 ? (c - t0 + 2) / 3 : 0;
        float streams[3 * DSTRIDE];
        const float *w = z + t0;
        const int avail = k - 1 + c - t0, groups = avail / 3;
        float *s0 = streams, *s1 = streams + DSTRIDE, *s2 = streams + 2 * DSTRIDE;
        split3(w, groups, s0, s1, s2);
        for (int q = groups * 3, sidx = 0; q < avail; q++, sidx++)
            streams[sidx * DSTRIDE + groups] = w[q];
        const float *const sv[3] = {s0, s1, s2};
        down3_k32[have_evex][mode](r->coef, sv, n_out, out);
        r->t = t0 + n_out * 3 - c;
        memmove(r->buf + (HIST - (k - 1)), z + c, (size_t)(k - 1) * sizeof(float));
        return (size_t)n_out;
    }
#endif
    if (mode == SK_OUT_S16)
        return commit_s16(r, c, out);
    int16_t y[3 * SK_RS_CHUNK + 4];
    size_t n = commit_s16(r, c, y);
    unsigned char *codes = out;
    for (size_t i = 0; i < n; i++)
        codes[i] = mode == SK_OUT_ULAW ? sk_ulaw_from_linear(y[i]) : sk_alaw_from_linear(y[i]);
    return n;
}

#ifdef SK_X86_DISPATCH
/* split3 reading PCM16 bytes (little-endian) instead of floats: the int16 -> float conversion and the
 * stream split in one pass, so the new samples of a frame are loaded and stored once. */
SK_AVX2 static void split3_pcm(const unsigned char *pcm, int n, float *s0, float *s1, float *s2)
{
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const unsigned char *p = pcm + 6 * i;
        __m256 v0 = _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i *)p)));
        __m256 v1 = _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i *)(p + 16))));
        __m256 v2 = _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i *)(p + 32))));
        unzip3(v0, v1, v2, s0 + i, s1 + i, s2 + i);
    }
    for (; i < n; i++) {
        s0[i] = (float)load_s16(pcm + 6 * i);
        s1[i] = (float)load_s16(pcm + 6 * i + 2);
        s2[i] = (float)load_s16(pcm + 6 * i + 4);
    }
}
#endif

#ifdef SK_X86_DISPATCH
/* G.711 codes -> floats, eight at a time with the decoding formulas of g711.c (the tables' source):
 * fewer instructions than eight scalar table loads and stores. */
SK_AVX2 static void g711_floats_avx2(const unsigned char *in, int n, float *out, int alaw)
{
    const __m256i f = _mm256_set1_epi32(0x0F), s7 = _mm256_set1_epi32(7);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i c = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(in + i)));
        __m256i t, neg;
        if (!alaw) { /* complement; ((mant << 3) + 0x84) << seg, minus 0x84; negative when bit 7 was 0 */
            c = _mm256_xor_si256(c, _mm256_set1_epi32(0xFF));
            __m256i seg = _mm256_and_si256(_mm256_srli_epi32(c, 4), s7);
            t = _mm256_add_epi32(_mm256_slli_epi32(_mm256_and_si256(c, f), 3), _mm256_set1_epi32(0x84));
            t = _mm256_sub_epi32(_mm256_sllv_epi32(t, seg), _mm256_set1_epi32(0x84));
            neg = _mm256_cmpgt_epi32(c, _mm256_set1_epi32(0x7F));
        } else { /* toggle even bits; segment 0: (mant << 4) + 8, else ((mant << 4) + 0x108) << (seg - 1) */
            c = _mm256_xor_si256(c, _mm256_set1_epi32(0x55));
            __m256i seg = _mm256_and_si256(_mm256_srli_epi32(c, 4), s7);
            __m256i seg0 = _mm256_cmpeq_epi32(seg, _mm256_setzero_si256());
            t = _mm256_slli_epi32(_mm256_and_si256(c, f), 4);
            t = _mm256_add_epi32(t, _mm256_blendv_epi8(_mm256_set1_epi32(0x108), _mm256_set1_epi32(8), seg0));
            t = _mm256_sllv_epi32(t, _mm256_max_epi32(_mm256_sub_epi32(seg, _mm256_set1_epi32(1)), _mm256_setzero_si256()));
            neg = _mm256_cmpgt_epi32(_mm256_set1_epi32(0x80), c);
        }
        t = _mm256_sub_epi32(_mm256_xor_si256(t, neg), neg); /* negate where neg */
        _mm256_storeu_ps(out + i, _mm256_cvtepi32_ps(t));
    }
    const float *tab = alaw ? sk_alaw_ftable : sk_ulaw_ftable;
    for (; i < n; i++)
        out[i] = tab[in[i]];
}
#endif

void sk_g711_floats(const unsigned char *in, int n, float *out, int alaw)
{
#ifdef SK_X86_DISPATCH
    if (simd_level > 0) {
        g711_floats_avx2(in, n, out, alaw);
        return;
    }
#endif
    const float *tab = alaw ? sk_alaw_ftable : sk_ulaw_ftable;
    for (int i = 0; i < n; i++)
        out[i] = tab[in[i]];
}

int sk_rs_takes_pcm(const sk_resampler *r)
{
    return is_down3_avx2(r);
}

size_t sk_rs_push_pcm(sk_resampler *r, const unsigned char *pcm, int c, void *out, int mode)
{
#ifdef SK_X86_DISPATCH
    /* As sk_rs_commit_to's 24 kHz -> 8 kHz path with the c samples staged, but the new samples go from
     * PCM16 straight into the three streams: only the <= 95 history samples are re-split. */
    const int k = 96, t0 = r->t;
    float *z = r->buf + (HIST - (k - 1));
    const int n_out = c > t0 ? (c - t0 + 2) / 3 : 0;
    if (n_out > 0) {
        float streams[3 * DSTRIDE];
        float *const sp[3] = {streams, streams + DSTRIDE, streams + 2 * DSTRIDE};
        const float *w = z + t0;
        const int hist = k - 1 - t0, hg = hist / 3;
        split3(w, hg, sp[0], sp[1], sp[2]);
        int g = hg, q = 3 * hg, used = 0; /* q: window index being filled */
        for (; q < hist; q++)             /* history samples of a group that new samples complete */
            sp[q % 3][g] = w[q];
        for (; q % 3 != 0 && used < c; q++, used++)
            sp[q % 3][g] = (float)load_s16(pcm + 2 * used);
        if (q % 3 == 0) {
            g = q / 3;
            const int ng = (c - used) / 3;
            split3_pcm(pcm + 2 * used, ng, sp[0] + g, sp[1] + g, sp[2] + g);
            used += 3 * ng;
            for (int s = 0; used < c; used++, s++) /* the incomplete last group */
                sp[s][g + ng] = (float)load_s16(pcm + 2 * used);
        }
        const float *const sv[3] = {sp[0], sp[1], sp[2]};
        down3_k32[have_evex][mode](r->coef, sv, n_out, out);
    }
    r->t = t0 + n_out * 3 - c;
    if (c >= k - 1) { /* the history: the last 95 samples */
        load_pcm_float(z, pcm + 2 * (size_t)(c - (k - 1)), k - 1);
    } else {
        memmove(z, z + c, (size_t)(k - 1 - c) * sizeof(float));
        load_pcm_float(z + (k - 1 - c), pcm, c);
    }
    return (size_t)n_out;
#else
    (void)r, (void)pcm, (void)c, (void)out, (void)mode;
    return 0;
#endif
}

size_t sk_rs_commit(sk_resampler *r, int c, int16_t *out)
{
    return sk_rs_commit_to(r, c, out, SK_OUT_S16);
}

size_t sk_resampler_run(sk_resampler *r, const int16_t *in, size_t n, int16_t *out)
{
    if (r->coef == NULL) {
        memcpy(out, in, n * sizeof(int16_t));
        return n;
    }
    size_t produced = 0;
    float *stage = sk_rs_stage(r);
    while (n > 0) {
        int c = n < SK_RS_CHUNK ? (int)n : SK_RS_CHUNK;
        for (int i = 0; i < c; i++)
            stage[i] = (float)in[i];
        produced += sk_rs_commit(r, c, out + produced);
        in += c;
        n -= (size_t)c;
    }
    return produced;
}

size_t sk_resampler_process(sk_resampler *r, const unsigned char *in, size_t nbytes, unsigned char *out)
{
    int16_t res[SK_RS_CHUNK * 3 + 4];
    size_t written = 0;
    if (nbytes > 0 && r->odd) { /* complete the sample split across calls */
        unsigned char pair[2] = {r->odd_byte, in[0]};
        int16_t s = (int16_t)load_s16(pair);
        size_t m = sk_resampler_run(r, &s, 1, res);
        store_pcm(out + 2 * written, res, m);
        written += m;
        r->odd = 0;
        in++;
        nbytes--;
    }
    size_t n = nbytes / 2;
    const int pass = r->coef == NULL;
    float *stage = sk_rs_stage(r);
    while (n > 0) {
        int c = n < SK_RS_CHUNK ? (int)n : SK_RS_CHUNK;
        size_t m;
        if (pass) {
            memcpy(out + 2 * written, in, 2 * (size_t)c);
            m = (size_t)c;
        } else {
            load_pcm_float(stage, in, c);
            m = sk_rs_commit(r, c, res);
            store_pcm(out + 2 * written, res, m);
        }
        written += m;
        in += 2 * c;
        n -= (size_t)c;
    }
    if (nbytes & 1) {
        r->odd = 1;
        r->odd_byte = in[0];
    }
    return 2 * written;
}
