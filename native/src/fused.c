/* Fused per-frame paths: payload <-> 24 kHz PCM16 in one call. Decoded samples go straight into the
 * resampler's float staging area, and resampled samples straight into the encoder: no extra passes. */
#include "sk_internal.h"

#if defined(__SSE2__) && defined(SK_LITTLE_ENDIAN)
#include <emmintrin.h>
#endif

int sk_dec24k_init(sk_dec24k *d, int codec)
{
    memset(d, 0, sizeof(*d));
    d->codec = codec;
    if (codec == SK_CODEC_PCMU || codec == SK_CODEC_PCMA)
        return sk_resampler_init(&d->rs, 8000, 24000);
    if (codec == SK_CODEC_G722) {
        sk_g722_decoder_init(&d->g722);
        return sk_resampler_init(&d->rs, 16000, 24000);
    }
    return -1;
}

int sk_enc24k_init(sk_enc24k *e, int codec)
{
    memset(e, 0, sizeof(*e));
    e->codec = codec;
    if (codec == SK_CODEC_PCMU || codec == SK_CODEC_PCMA)
        return sk_resampler_init(&e->rs, 24000, 8000);
    if (codec == SK_CODEC_G722) {
        sk_g722_encoder_init(&e->g722);
        return sk_resampler_init(&e->rs, 24000, 16000);
    }
    return -1;
}

/* The c samples staged in d's resampler -> 24 kHz PCM16 at out; returns the bytes written. */
static size_t commit_out(sk_dec24k *d, int c, unsigned char *out)
{
#ifdef SK_LITTLE_ENDIAN
    if (((uintptr_t)out & 1) == 0) /* straight into place: no copy through res */
        return 2 * sk_rs_commit(&d->rs, c, (int16_t *)(void *)out);
#endif
    int16_t res[3 * SK_RS_CHUNK + 4];
    const size_t k = sk_rs_commit(&d->rs, c, res);
    store_pcm(out, res, k);
    return 2 * k;
}

/* A pass of the fused decoder is one block of the receive QMF. */
typedef char sk_pass_fits_qmf_block[(SK_DEC_CHUNK <= SK_G722_QMF_BLOCK) ? 1 : -1];

size_t sk_dec24k_bands(sk_dec24k *d, int16_t *ev, int16_t *od, int c, unsigned char *out)
{
    int16_t pcm16[SK_RS_CHUNK];
    sk_g722_synthesise(&d->g722, ev, od, c, pcm16);
    float *stage = sk_rs_stage(&d->rs);
    for (int i = 0; i < 2 * c; i++)
        stage[i] = (float)pcm16[i];
    return commit_out(d, 2 * c, out);
}

size_t sk_dec24k_run(sk_dec24k *d, const unsigned char *payload, size_t n, unsigned char *out)
{
    const int g722 = d->codec == SK_CODEC_G722;
    const size_t per = g722 ? SK_DEC_CHUNK : SK_RS_CHUNK; /* payload bytes per staged chunk */
    size_t written = 0;
    while (n > 0) {
        const int c = n < per ? (int)n : (int)per;
        if (g722) {
            int16_t ev[SK_G722_QMF_HIST + SK_DEC_CHUNK], od[SK_G722_QMF_HIST + SK_DEC_CHUNK];
            sk_g722_decode_bands(&d->g722, payload, c, ev + SK_G722_QMF_HIST, od + SK_G722_QMF_HIST);
            written += sk_dec24k_bands(d, ev, od, c, out + written);
        } else {
            sk_g711_floats(payload, c, sk_rs_stage(&d->rs), d->codec == SK_CODEC_PCMA);
            written += commit_out(d, c, out + written);
        }
        payload += c;
        n -= (size_t)c;
    }
    return written;
}

/* G.722 pairs coded at once into out + at, or (stage) their sub-band samples left at stage_xl/xh + at. */
static void g722_pairs(sk_enc24k *e, const int16_t *pcm, int pairs, unsigned char *out, size_t at, int stage)
{
    if (stage)
        sk_g722_analyse(&e->g722, pcm, pairs, e->stage_xl + at, e->stage_xh + at);
    else
        sk_g722_encode_block(&e->g722, pcm, pairs, out + at);
}

static size_t enc24k_run(sk_enc24k *e, const unsigned char *pcm, size_t nbytes, unsigned char *out, int staging)
{
    int16_t res[SK_RS_CHUNK];
    size_t written = 0;
    sk_resampler *rs = &e->rs;
    float *stage = sk_rs_stage(rs);
    if (e->codec != SK_CODEC_G722 && sk_rs_takes_pcm(rs)) { /* PCM16 -> streams -> codes, no staging */
        const int mode = e->codec == SK_CODEC_PCMU ? SK_OUT_ULAW : SK_OUT_ALAW;
        if (rs->odd && nbytes > 0) { /* a sample split across calls */
            unsigned char pair[2] = {rs->odd_byte, pcm[0]};
            written += sk_rs_push_pcm(rs, pair, 1, out, mode);
            rs->odd = 0;
            pcm++;
            nbytes--;
        }
        while (nbytes > 1) {
            size_t whole = nbytes / 2;
            int c = whole < SK_RS_CHUNK ? (int)whole : SK_RS_CHUNK;
            written += sk_rs_push_pcm(rs, pcm, c, out + written, mode);
            pcm += 2 * (size_t)c;
            nbytes -= 2 * (size_t)c;
        }
        if (nbytes == 1) {
            rs->odd = 1;
            rs->odd_byte = pcm[0];
        }
        return written;
    }
    while (nbytes > 0) {
        int n = 0;
        if (rs->odd) { /* a sample split across calls */
            unsigned char pair[2] = {rs->odd_byte, pcm[0]};
            stage[n++] = (float)load_s16(pair);
            rs->odd = 0;
            pcm++;
            nbytes--;
        }
        size_t whole = nbytes / 2;
        int c = whole < (size_t)(SK_RS_CHUNK - n) ? (int)whole : SK_RS_CHUNK - n;
        load_pcm_float(stage + n, pcm, c);
        n += c;
        pcm += 2 * (size_t)c;
        nbytes -= 2 * (size_t)c;
        if (nbytes == 1) {
            rs->odd = 1;
            rs->odd_byte = pcm[0];
            nbytes = 0;
        }
        if (e->codec != SK_CODEC_G722) { /* codes straight from the resampler's output lanes */
            written += sk_rs_commit_to(rs, n, out + written,
                                       e->codec == SK_CODEC_PCMU ? SK_OUT_ULAW : SK_OUT_ALAW);
        } else {
            size_t k = sk_rs_commit(rs, n, res); /* down-sampling: k <= n/1.5 + 1 */
            sk_g722_encoder *g = &e->g722;
            size_t i = 0;
            if (g->have_held && k > 0) {
                const int16_t pair[2] = {g->held, res[0]};
                g722_pairs(e, pair, 1, out, written++, staging);
                g->have_held = 0;
                i = 1;
            }
            const int pairs = (int)((k - i) / 2);
            g722_pairs(e, res + i, pairs, out, written, staging);
            written += (size_t)pairs;
            i += 2 * (size_t)pairs;
            if (i < k) {
                g->held = res[i];
                g->have_held = 1;
            }
        }
    }
    return written;
}

size_t sk_enc24k_run(sk_enc24k *e, const unsigned char *pcm, size_t nbytes, unsigned char *out)
{
    return enc24k_run(e, pcm, nbytes, out, 0);
}

/* n staged pairs coded into ->out by the per-call coder. */
static void code_pairs(sk_enc24k *e, int n)
{
    sk_g722_code(&e->g722, e->stage_xl, e->stage_xh, n, e->out);
}

static void code_staged(sk_enc24k *e)
{
    const int n = e->staged;
    e->staged = 0;
    code_pairs(e, n);
}

typedef char sk_enc_batch_sized[(sizeof(((sk_enc24k_batch *)0)->items) == SK_BATCH_MAX * sizeof(sk_enc24k *)) ? 1 : -1];

int64_t sk_enc24k_stage(sk_enc24k_batch *b, sk_enc24k *e, const unsigned char *pcm, size_t nbytes)
{
    const int refused = sk_batch_refusal(e->batch, b, b->count);
    if (refused)
        return refused;
    if (e->staged > 0) /* staged before and never finished: coded first, so the state stays in order */
        code_staged(e);
    b->items[b->count++] = e;
    e->batch = b;
    e->in_mean_square = sk_mean_square(pcm, nbytes >> 1);
    if (e->codec != SK_CODEC_G722 || nbytes > SK_ENC_STAGE_BYTES)
        return (int64_t)sk_enc24k_run(e, pcm, nbytes, e->out);
    /* nbytes <= 1500: at most 751 samples in, 502 out (+ one held): 252 <= SK_ENC_STAGE pairs */
    const size_t n = enc24k_run(e, pcm, nbytes, e->out, 1);
    e->staged = (int32_t)n;
    return (int64_t)n;
}

/* Codes one group of staged states with equal counts (n pairs each): side by side, the lanes that no
 * call fills given an idle encoder of their own, whose codes are dropped. */
static void finish_group(sk_enc24k *const *group, int count, int n)
{
    if (count == 1) { /* alone: the eight lanes cost nearly twice one call's own coding */
        code_pairs(group[0], n);
        return;
    }
    static const int32_t silence[SK_ENC_STAGE];
    sk_g722_encoder idle[SK_G722_LANES];
    unsigned char scratch[SK_G722_LANES][SK_ENC_STAGE];
    sk_g722_encoder *enc[SK_G722_LANES];
    const int32_t *xl[SK_G722_LANES], *xh[SK_G722_LANES];
    unsigned char *out[SK_G722_LANES];
    for (int l = 0; l < SK_G722_LANES; l++) {
        if (l < count) {
            enc[l] = &group[l]->g722;
            xl[l] = group[l]->stage_xl, xh[l] = group[l]->stage_xh;
            out[l] = group[l]->out;
        } else {
            sk_g722_encoder_init(&idle[l]);
            enc[l] = &idle[l];
            xl[l] = xh[l] = silence;
            out[l] = scratch[l];
        }
    }
    sk_g722_code_lanes(enc, xl, xh, n, out);
}

static int take_staged(const void *items, int i)
{
    sk_enc24k *e = ((sk_enc24k *const *)items)[i];
    const int n = e->staged;
    e->staged = 0;
    return n;
}

static void finish_members(const void *items, const int *members, int g, int n)
{
    sk_enc24k *group[SK_G722_LANES];
    for (int l = 0; l < g; l++)
        group[l] = ((sk_enc24k *const *)items)[members[l]];
    finish_group(group, g, n);
}

void sk_enc24k_finish(sk_enc24k_batch *b)
{
    const int count = b->count;
    if (!sk_g722_lanes_ready()) {
        for (int i = 0; i < count; i++)
            if (b->items[i]->staged > 0)
                code_staged(b->items[i]);
    } else {
        sk_lane_groups(b->items, count, take_staged, finish_members);
    }
    for (int i = 0; i < count; i++)
        b->items[i]->batch = NULL;
    b->count = 0;
}

size_t sk_dec24k_push(sk_dec24k *d, const unsigned char *payload, size_t n)
{
    return sk_dec24k_run(d, payload, n, d->out);
}

size_t sk_enc24k_push(sk_enc24k *e, const unsigned char *pcm, size_t nbytes)
{
    if (e->staged > 0) /* a staged frame never finished: coded first, so the state stays in order */
        code_staged(e);
    e->in_mean_square = sk_mean_square(pcm, nbytes >> 1);
    return sk_enc24k_run(e, pcm, nbytes, e->out);
}

double sk_mean_square(const unsigned char *pcm, size_t n)
{
    if (n == 0)
        return 0.0;
    /* 32 768^2 * 2^32 samples stays below 2^63: exact for any realistic length. Partial sums in
     * 32-bit lanes would overflow after two full-scale samples, so the sums are 64-bit. */
    uint64_t acc = 0;
    size_t i = 0;
#if defined(__SSE2__) && defined(SK_LITTLE_ENDIAN)
    /* pmaddwd squares and adds a pair: at most 2^31, exact as an unsigned 32-bit lane, then widened */
    const __m128i zero = _mm_setzero_si128();
    __m128i sums = zero;
    for (; i + 8 <= n; i += 8) {
        const __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(pcm + 2 * i));
        const __m128i pairs = _mm_madd_epi16(v, v);
        sums = _mm_add_epi64(sums, _mm_unpacklo_epi32(pairs, zero));
        sums = _mm_add_epi64(sums, _mm_unpackhi_epi32(pairs, zero));
    }
    uint64_t lanes[2];
    _mm_storeu_si128((__m128i *)(void *)lanes, sums);
    acc = lanes[0] + lanes[1];
#endif
    for (; i < n; i++) {
        const int32_t v = load_s16(pcm + 2 * i);
        acc += (uint64_t)(v * v);
    }
    return (double)acc / (double)n;
}
