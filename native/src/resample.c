/* Streaming rational polyphase FIR resampler (L/M) for 8000, 16000 and 24000 Hz.
 *
 * Output m sits at position T = m*M on the input grid upsampled by L: it is the dot product of branch
 * (T mod L) with the K inputs starting at window index T div L. Outputs m, m+L, m+2L, ... share a
 * branch and their windows start M inputs apart, so after splitting the input into M interleaved
 * streams, tap k of all of them reads one contiguous run of floats: the loops run *across outputs*
 * (one output per SIMD lane, no horizontal sums) and every output is the same sequential sum
 * h[0]x[0] + h[1]x[1] + ... whatever the lane width or the chunking. Hence frame-by-frame equals
 * all-at-once exactly, and the SSE2 and AVX2 builds of the loop give identical bytes (multiplies and
 * adds stay separate: the build uses -ffp-contract=off, so no FMA rounding differences).
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
static int simd_level = -1; /* -1 unknown, 0 baseline (SSE2), 1 AVX2; set once, idempotent */
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
    simd_level = request < 0 ? have : (request < have ? request : have);
    return simd_level;
#else
    (void)request;
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

/* Round half away from zero and saturate; written without branches so the loops vectorise. */
SK_INLINE int16_t to_s16(float y)
{
    float v = y + (y >= 0.0f ? 0.5f : -0.5f);
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

size_t sk_rs_commit(sk_resampler *r, int c, int16_t *out)
{
    const int up = r->up, down = r->down, k = r->taps;
    const float *z = r->buf + (HIST - (k - 1)); /* window index 0: K-1 history samples, then c new ones */
    const int t0 = r->t, total = k - 1 + c;
    const int n_out = c * up > t0 ? (c * up - t0 + down - 1) / down : 0;
    float streams[3 * DSTRIDE];
    int16_t y[3 * OSTRIDE];
    const float *x[SK_RS_MAX_TAPS];

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
    r->t = t0 + n_out * down - c * up;
    memmove(r->buf + (HIST - (k - 1)), z + c, (size_t)(k - 1) * sizeof(float));
    return (size_t)n_out;
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
