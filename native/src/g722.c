/* ITU-T G.722 at 64 kbit/s: a QMF splits 16 kHz audio into two 8 kHz sub-bands; the lower band is
 * coded with 6-bit ADPCM, the higher with 2-bit ADPCM, both with the standard's adaptive pole/zero
 * predictor. Written from the algorithm description (blocks named as in the Recommendation); the
 * constants are the Recommendation's tables. PCM is 16-bit: the sub-band signals carry 15 bits.
 */
#include "sk_internal.h"

/* Even-indexed QMF coefficients h(2i); the odd ones are the same values in reverse order. */
static const int qmf_h[12] = {3, -11, 12, 32, -210, 951, 3876, -805, 362, -156, 53, -11};

/* Lower band: 6-bit quantiser decision levels and code assignment (positive / negative errors). */
static const int q6[31] = {0,    35,   72,   110,  150,  190,  233,  276,  323,  370,  422,
                           473,  530,  587,  650,  714,  786,  858,  940,  1023, 1121, 1219,
                           1339, 1458, 1612, 1765, 1980, 2195, 2557, 2919, 0};
static const int code_neg[31] = {0,  63, 62, 31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19,
                                 18, 17, 16, 15, 14, 13, 12, 11, 10, 9,  8,  7,  6,  5,  4};
static const int code_pos[31] = {0,  61, 60, 59, 58, 57, 56, 55, 54, 53, 52, 51, 50, 49, 48, 47,
                                 46, 45, 44, 43, 42, 41, 40, 39, 38, 37, 36, 35, 34, 33, 32};
/* Inverse quantisers: 4-bit (predictor feedback), 6-bit (lower band output), 2-bit (higher band). */
static const int qm4[16] = {0,    -20456, -12896, -8968, -6288, -4240, -2584, -1200,
                            20456, 12896, 8968,   6288,  4240,  2584,  1200,  0};
static const int qm6[64] = {
    -136,  -136,  -136,  -136,  -24808, -21904, -19008, -16704, -14984, -13512, -12280, -11192, -10232,
    -9360, -8576, -7856, -7192, -6576,  -6000,  -5456,  -4944,  -4464,  -4008,  -3576,  -3168,  -2776,
    -2400, -2032, -1688, -1360, -1040,  -728,   24808,  21904,  19008,  16704,  14984,  13512,  12280,
    11192, 10232, 9360,  8576,  7856,   7192,   6576,   6000,   5456,   4944,   4464,   4008,   3576,
    3168,  2776,  2400,  2032,  1688,   1360,   1040,   728,    432,    136,    -432,   -136};
static const int qm2[4] = {-7408, -1616, 7408, 1616};
/* Log scale factor adaptation: multipliers per (truncated) code. */
static const int wl[8] = {-60, -30, 58, 172, 334, 538, 1198, 3042};
static const int rl42[16] = {0, 7, 6, 5, 4, 3, 2, 1, 7, 6, 5, 4, 3, 2, 1, 0};
static const int wh[3] = {0, -214, 798};
static const int rh2[4] = {2, 1, 2, 1};
/* Antilog table for the scale factor: 2048 * 2^(i/32). */
static const int ilb[32] = {2048, 2093, 2139, 2186, 2233, 2282, 2332, 2383, 2435, 2489, 2543,
                            2599, 2656, 2714, 2774, 2834, 2896, 2960, 3025, 3091, 3158, 3228,
                            3298, 3371, 3444, 3520, 3597, 3676, 3756, 3838, 3922, 4008};

static void band_init(sk_g722_band *b, int det)
{
    memset(b, 0, sizeof(*b));
    b->det = det;
}

/* LOGSCL/SCALEL (lower) and LOGSCH/SCALEH (higher): same shape, different constants. */
static void adapt_scale(sk_g722_band *b, int multiplier, int nb_max, int shift_base)
{
    int nb = ((b->nb * 32512) >> 15) + multiplier;
    nb = clamp_int(nb, 0, nb_max);
    b->nb = nb;
    int frac = (nb >> 6) & 31;
    int shift = shift_base - (nb >> 11);
    int v = shift < 0 ? ilb[frac] << -shift : ilb[frac] >> shift;
    b->det = v << 2;
}

static inline int sign_bit(int v)
{
    return v < 0;
}

/* Block 4: reconstruction, pole/zero predictor adaptation and the next prediction. */
static void predictor_update(sk_g722_band *b, int d)
{
    int r = sat16(b->s + d);  /* RECONS */
    int p = sat16(b->sz + d); /* PARREC */

    /* UPPOL2 */
    int s0 = sign_bit(p), s1 = sign_bit(b->p[0]), s2 = sign_bit(b->p[1]);
    int w1 = sat16(b->a[0] * 4);
    int w2 = s0 == s1 ? -w1 : w1;
    if (w2 > 32767)
        w2 = 32767;
    int a2 = (s0 == s2 ? 128 : -128) + (w2 >> 7) + ((b->a[1] * 32512) >> 15);
    a2 = clamp_int(a2, -12288, 12288);

    /* UPPOL1 */
    int a1 = sat16((s0 == s1 ? 192 : -192) + ((b->a[0] * 32640) >> 15));
    int lim = sat16(15360 - a2);
    a1 = clamp_int(a1, -lim, lim);

    /* UPZERO: sign-sign update of the six zero coefficients */
    int step = d == 0 ? 0 : 128;
    int sd = sign_bit(d);
    for (int i = 0; i < 6; i++) {
        int g = sign_bit(b->d[i]) == sd ? step : -step;
        b->b[i] = sat16(g + ((b->b[i] * 32640) >> 15));
    }

    /* DELAYA (spelled out: a loop here becomes a memmove call) */
    b->d[5] = b->d[4];
    b->d[4] = b->d[3];
    b->d[3] = b->d[2];
    b->d[2] = b->d[1];
    b->d[1] = b->d[0];
    b->d[0] = d;
    b->r[1] = b->r[0];
    b->r[0] = r;
    b->p[1] = b->p[0];
    b->p[0] = p;
    b->a[0] = a1;
    b->a[1] = a2;

    /* FILTEP */
    int sp = sat16(((b->a[0] * sat16(b->r[0] * 2)) >> 15) + ((b->a[1] * sat16(b->r[1] * 2)) >> 15));
    /* FILTEZ */
    int sz = 0;
    for (int i = 5; i >= 0; i--)
        sz = sat16(sz + ((b->b[i] * sat16(b->d[i] * 2)) >> 15));
    b->sp = sp;
    b->sz = sz;
    b->s = sat16(sp + sz); /* PREDIC */
}

void sk_g722_encoder_init(sk_g722_encoder *e)
{
    memset(e, 0, sizeof(*e));
    band_init(&e->low, 32);
    band_init(&e->high, 8);
}

void sk_g722_decoder_init(sk_g722_decoder *d)
{
    memset(d, 0, sizeof(*d));
    band_init(&d->low, 32);
    band_init(&d->high, 8);
}

unsigned char sk_g722_encode_pair(sk_g722_encoder *e, int x0, int x1)
{
    /* Transmit QMF */
    memmove(e->x, e->x + 2, 22 * sizeof(e->x[0]));
    e->x[22] = x0;
    e->x[23] = x1;
    int even = 0, odd = 0;
    for (int i = 0; i < 12; i++) {
        even += e->x[2 * i] * qmf_h[i];
        odd += e->x[2 * i + 1] * qmf_h[11 - i];
    }
    int xl = (odd + even) >> 14;
    int xh = (odd - even) >> 14;

    /* Lower band: quantise the prediction error with 6 bits */
    sk_g722_band *lo = &e->low;
    int el = sat16(xl - lo->s);
    int mag = el >= 0 ? el : -(el + 1);
    /* Smallest i in 1..29 with mag < (q6[i]*det)>>12, else 30: the thresholds grow with i, so a binary
     * search finds the same level as the Recommendation's linear scan in 5 steps instead of up to 29. */
    int i = 1, hi_i = 30;
    while (i < hi_i) {
        int mid = (i + hi_i) >> 1;
        if (mag >= ((q6[mid] * lo->det) >> 12))
            i = mid + 1;
        else
            hi_i = mid;
    }
    int il = el < 0 ? code_neg[i] : code_pos[i];
    int ril = il >> 2;
    int dl = (lo->det * qm4[ril]) >> 15;
    adapt_scale(lo, wl[rl42[ril]], 18432, 8);
    predictor_update(lo, dl);

    /* Higher band: 2 bits */
    sk_g722_band *hi = &e->high;
    int eh = sat16(xh - hi->s);
    int hmag = eh >= 0 ? eh : -(eh + 1);
    int big = hmag >= ((564 * hi->det) >> 12);
    int ih = eh < 0 ? (big ? 0 : 1) : (big ? 2 : 3);
    int dh = (hi->det * qm2[ih]) >> 15;
    adapt_scale(hi, wh[rh2[ih]], 22528, 10);
    predictor_update(hi, dh);

    return (unsigned char)((ih << 6) | il);
}

void sk_g722_decode_code(sk_g722_decoder *d, unsigned char code, int16_t out[2])
{
    int il = code & 0x3F, ih = code >> 6;

    sk_g722_band *lo = &d->low;
    int rl = clamp_int(lo->s + ((lo->det * qm6[il]) >> 15), -16384, 16383);
    int ril = il >> 2;
    int dl = (lo->det * qm4[ril]) >> 15;
    adapt_scale(lo, wl[rl42[ril]], 18432, 8);
    predictor_update(lo, dl);

    sk_g722_band *hi = &d->high;
    int dh = (hi->det * qm2[ih]) >> 15;
    int rh = clamp_int(hi->s + dh, -16384, 16383);
    adapt_scale(hi, wh[rh2[ih]], 22528, 10);
    predictor_update(hi, dh);

    /* Receive QMF */
    memmove(d->x, d->x + 2, 22 * sizeof(d->x[0]));
    d->x[22] = rl + rh;
    d->x[23] = rl - rh;
    int o1 = 0, o2 = 0;
    for (int i = 0; i < 12; i++) {
        o2 += d->x[2 * i] * qmf_h[i];
        o1 += d->x[2 * i + 1] * qmf_h[11 - i];
    }
    out[0] = (int16_t)sat16(o1 >> 11);
    out[1] = (int16_t)sat16(o2 >> 11);
}

size_t sk_g722_encode(sk_g722_encoder *e, const unsigned char *pcm, size_t nbytes, unsigned char *out)
{
    size_t written = 0;
    while (nbytes > 0) {
        int sample;
        if (e->odd) { /* finish a sample split across calls */
            unsigned char pair[2] = {e->odd_byte, pcm[0]};
            sample = load_s16(pair);
            e->odd = 0;
            pcm++;
            nbytes--;
        } else if (nbytes >= 2) {
            sample = load_s16(pcm);
            pcm += 2;
            nbytes -= 2;
        } else {
            e->odd = 1;
            e->odd_byte = pcm[0];
            break;
        }
        if (!e->have_held) {
            e->held = (int16_t)sample;
            e->have_held = 1;
        } else {
            out[written++] = sk_g722_encode_pair(e, e->held, sample);
            e->have_held = 0;
        }
    }
    return written;
}

size_t sk_g722_decode(sk_g722_decoder *d, const unsigned char *in, size_t n, unsigned char *pcm)
{
    int16_t pair[2];
    for (size_t i = 0; i < n; i++) {
        sk_g722_decode_code(d, in[i], pair);
        store_s16(pcm + 4 * i, pair[0]);
        store_s16(pcm + 4 * i + 2, pair[1]);
    }
    return 4 * n;
}
