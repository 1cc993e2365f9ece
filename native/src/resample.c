/* Streaming rational polyphase FIR resampler (L/M) for 8000, 16000 and 24000 Hz.
 *
 * Output m sits at position t = m*M on the input grid upsampled by L; it is the dot product of branch
 * (t mod L) with the K input samples ending at t div L. The state keeps the last K-1 inputs and t,
 * so chunking never changes the arithmetic of any output: frame-by-frame equals all-at-once exactly.
 */
#include "sk_internal.h"
#include "sk_filters.h"

#define HIST (SK_RS_MAX_TAPS - 1)

int sk_abi_version(void)
{
    return SK_ABI_VERSION;
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

/* Four partial sums per output map onto one SIMD register without reassociating floats (no
 * -ffast-math needed, results identical at every optimisation level). */
#define MAC4(a, h, x, i)                                                                         \
    do {                                                                                         \
        a[0] += (h)[(i)] * (x)[(i)];                                                             \
        a[1] += (h)[(i) + 1] * (x)[(i) + 1];                                                     \
        a[2] += (h)[(i) + 2] * (x)[(i) + 2];                                                     \
        a[3] += (h)[(i) + 3] * (x)[(i) + 3];                                                     \
    } while (0)

static inline float hsum(const float a[4])
{
    return (a[0] + a[2]) + (a[1] + a[3]);
}

static inline float dot(const float *restrict h, const float *restrict x, int k)
{
    float a[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int i = 0; i < k; i += 4)
        MAC4(a, h, x, i);
    return hsum(a);
}

static inline int16_t to_s16(float y)
{
    y += y >= 0.0f ? 0.5f : -0.5f;
    if (y >= 32767.0f)
        return 32767;
    if (y <= -32768.0f)
        return -32768;
    return (int16_t)y;
}

size_t sk_resampler_run(sk_resampler *r, const int16_t *in, size_t n, int16_t *out)
{
    if (r->coef == NULL) {
        memcpy(out, in, n * sizeof(int16_t));
        return n;
    }
    const int up = r->up, down = r->down, k = r->taps;
    float *hist = r->buf + (HIST - (k - 1)); /* the branch window starts here */
    size_t produced = 0;
    while (n > 0) {
        int c = n < SK_RS_CHUNK ? (int)n : SK_RS_CHUNK;
        float *stage = r->buf + HIST;
        for (int i = 0; i < c; i++)
            stage[i] = (float)in[i];
        /* Walk t = idx * up + phase incrementally: a division per output would cost more than the FIR. */
        int idx = r->t / up, phase = r->t % up;
        while (idx < c) {
            out[produced++] = to_s16(dot(r->coef + (size_t)phase * (size_t)k, hist + idx, k));
            phase += down;
            while (phase >= up) {
                phase -= up;
                idx++;
            }
        }
        r->t = (idx - c) * up + phase;
        memmove(r->buf, r->buf + c, HIST * sizeof(float));
        in += c;
        n -= (size_t)c;
    }
    return produced;
}

size_t sk_resampler_process(sk_resampler *r, const unsigned char *in, size_t nbytes, unsigned char *out)
{
    int16_t tmp[SK_RS_CHUNK];
    int16_t res[SK_RS_CHUNK * 3 + 4];
    size_t written = 0;
    if (nbytes > 0 && r->odd) { /* complete the sample split across calls */
        unsigned char pair[2] = {r->odd_byte, in[0]};
        tmp[0] = (int16_t)load_s16(pair);
        size_t m = sk_resampler_run(r, tmp, 1, res);
        for (size_t i = 0; i < m; i++)
            store_s16(out + 2 * (written + i), res[i]);
        written += m;
        r->odd = 0;
        in++;
        nbytes--;
    }
    size_t n = nbytes / 2;
    while (n > 0) {
        size_t c = n < SK_RS_CHUNK ? n : SK_RS_CHUNK;
        for (size_t i = 0; i < c; i++)
            tmp[i] = (int16_t)load_s16(in + 2 * i);
        size_t m = sk_resampler_run(r, tmp, c, res);
        for (size_t i = 0; i < m; i++)
            store_s16(out + 2 * (written + i), res[i]);
        written += m;
        in += 2 * c;
        n -= c;
    }
    if (nbytes & 1) {
        r->odd = 1;
        r->odd_byte = in[0];
    }
    return 2 * written;
}
