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

double sk_frame_push(sk_frame_decoder *f, const unsigned char *payload, size_t n)
{
    f->pcm_len = sk_dec24k_push(&f->dec, payload, n);
    if (f->text_of != SK_TEXT_NONE) {
        /* head and tail are copied every time (a few dozen bytes): the caller may move the buffer */
        unsigned char *t = f->text;
        memcpy(t, f->head, (size_t)f->head_len);
        t += f->head_len;
        t += f->text_of == SK_TEXT_PCM ? sk_base64(f->dec.out, f->pcm_len, t) : sk_base64(payload, n, t);
        memcpy(t, f->tail, (size_t)f->tail_len);
        f->text_len = (size_t)(t - f->text) + (size_t)f->tail_len;
    }
    return sk_mean_square(f->dec.out, f->pcm_len >> 1);
}
