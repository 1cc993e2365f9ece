/* One received 20 ms frame in one call: payload -> 24 kHz PCM16 (the fused decoder), the mean square
 * of that PCM (the VAD's level), and the base64 text the frame is forwarded as (the Realtime API's
 * input_audio_buffer.append is JSON with the audio in base64; the caller gives the JSON around it).
 * Per frame this replaces three FFI crossings and two Python objects with one crossing. */
#include "sk_internal.h"

int sk_frame_decoder_init(sk_frame_decoder *f, int codec, int text_of, const unsigned char *head,
                          size_t head_len, const unsigned char *tail, size_t tail_len)
{
    memset(f, 0, sizeof(*f)); /* the caller sets dec.out and text after init */
    if (text_of < SK_TEXT_NONE || text_of > SK_TEXT_PAYLOAD || head_len > SK_TEXT_MAX_HEAD ||
        tail_len > SK_TEXT_MAX_TAIL)
        return -1;
    f->text_of = text_of;
    f->head_len = (int32_t)head_len;
    f->tail_len = (int32_t)tail_len;
    if (head_len)
        memcpy(f->head, head, head_len);
    if (tail_len)
        memcpy(f->tail, tail, tail_len);
    return sk_dec24k_init(&f->dec, codec);
}

/* The text and level of the payload just decoded into dec.out (pcm_len bytes). */
static double frame_done(sk_frame_decoder *f, const unsigned char *payload, size_t n)
{
    if (f->text_of != SK_TEXT_NONE) {
        /* head and tail are copied every time (a few dozen bytes): the caller may move the buffer */
        unsigned char *t = f->text;
        memcpy(t, f->head, (size_t)f->head_len);
        t += f->head_len;
        t += f->text_of == SK_TEXT_PCM ? sk_base64(f->dec.out, f->pcm_len, t) : sk_base64(payload, n, t);
        memcpy(t, f->tail, (size_t)f->tail_len);
        f->text_len = (size_t)(t - f->text) + (size_t)f->tail_len;
    }
    return f->mean_square = sk_mean_square(f->dec.out, f->pcm_len >> 1);
}

static double decode_now(sk_frame_decoder *f, const unsigned char *payload, size_t n)
{
    f->pcm_len = sk_dec24k_push(&f->dec, payload, n);
    return frame_done(f, payload, n);
}

static void decode_staged(sk_frame_decoder *f)
{
    const size_t n = (size_t)f->staged;
    f->staged = 0;
    decode_now(f, f->stage, n);
}

double sk_frame_push(sk_frame_decoder *f, const unsigned char *payload, size_t n)
{
    if (f->staged > 0)
        decode_staged(f);
    return decode_now(f, payload, n);
}

typedef char sk_frame_batch_sized[(sizeof(((sk_frame_batch *)0)->items) == SK_BATCH_MAX * sizeof(sk_frame_decoder *)) ? 1 : -1];

int sk_frame_stage(sk_frame_batch *b, sk_frame_decoder *f, const unsigned char *payload, size_t n)
{
    const int refused = sk_batch_refusal(f->batch, b, b->count);
    if (refused)
        return refused;
    if (f->staged > 0) /* staged before and never finished: decoded first, in order */
        decode_staged(f);
    if (f->dec.codec != SK_CODEC_G722 || n == 0 || n > SK_DEC_STAGE) {
        decode_now(f, payload, n);
        return 0;
    }
    memcpy(f->stage, payload, n);
    f->staged = (int32_t)n;
    b->items[b->count++] = f;
    f->batch = b;
    return b->count;
}

/* A staged payload is decoded in one pass of the fused decoder (sk_dec24k_bands). */
typedef char sk_stage_fits_one_pass[(SK_DEC_STAGE <= SK_DEC_CHUNK) ? 1 : -1];

/* Decodes one group of staged states with equal counts (n codes each): side by side, the lanes that no
 * call fills given an idle decoder of their own, whose outputs are dropped. */
static void finish_group(sk_frame_decoder *const *group, int count, int n)
{
    /* the eight lanes cost about as much as two calls' own decoding at SIMD level 1, one at level 2 */
    if (count <= (sk_simd_active() > 1 ? 1 : 2)) {
        for (int l = 0; l < count; l++)
            decode_now(group[l], group[l]->stage, (size_t)n);
        return;
    }
    static const unsigned char idle_codes[SK_DEC_STAGE];
    sk_g722_decoder idle[SK_G722_LANES];
    int16_t ev[SK_G722_LANES][SK_G722_QMF_HIST + SK_DEC_STAGE], od[SK_G722_LANES][SK_G722_QMF_HIST + SK_DEC_STAGE];
    sk_g722_decoder *dec[SK_G722_LANES];
    const unsigned char *in[SK_G722_LANES];
    int16_t *ev_at[SK_G722_LANES], *od_at[SK_G722_LANES];
    for (int l = 0; l < SK_G722_LANES; l++) {
        if (l < count) {
            dec[l] = &group[l]->dec.g722;
            in[l] = group[l]->stage;
        } else {
            sk_g722_decoder_init(&idle[l]);
            dec[l] = &idle[l];
            in[l] = idle_codes;
        }
        ev_at[l] = ev[l] + SK_G722_QMF_HIST;
        od_at[l] = od[l] + SK_G722_QMF_HIST;
    }
    sk_g722_decode_lanes(dec, in, n, ev_at, od_at);
    for (int l = 0; l < count; l++) {
        sk_frame_decoder *f = group[l];
        f->pcm_len = sk_dec24k_bands(&f->dec, ev[l], od[l], n, f->dec.out);
        frame_done(f, f->stage, (size_t)n);
    }
}

static int take_staged(const void *items, int i)
{
    sk_frame_decoder *f = ((sk_frame_decoder *const *)items)[i];
    const int n = f->staged;
    f->staged = 0;
    return n;
}

static void finish_members(const void *items, const int *members, int g, int n)
{
    sk_frame_decoder *group[SK_G722_LANES];
    for (int l = 0; l < g; l++)
        group[l] = ((sk_frame_decoder *const *)items)[members[l]];
    finish_group(group, g, n);
}

void sk_frame_finish(sk_frame_batch *b, double *mean_squares)
{
    const int count = b->count;
    if (!sk_g722_lanes_ready()) {
        for (int i = 0; i < count; i++)
            if (b->items[i]->staged > 0)
                decode_staged(b->items[i]);
    } else {
        sk_lane_groups(b->items, count, take_staged, finish_members);
    }
    for (int i = 0; i < count; i++) {
        mean_squares[i] = b->items[i]->mean_square;
        b->items[i]->batch = NULL;
    }
    b->count = 0;
}
