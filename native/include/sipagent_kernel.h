/* sipagent audio kernel: G.711, G.722 (64 kbit/s) and streaming polyphase resampling.
 *
 * This file is read twice: by the C compiler and by cffi's cdef (native/build_kernel.py), so it holds
 * declarations only: no #include, no include guard, sizes as plain numbers.
 *
 * Conventions: PCM is 16-bit little-endian mono passed as bytes; every state struct is owned by the
 * caller (allocated once, e.g. with ffi.new) and nothing allocates memory. Byte counts may be odd: the
 * streaming objects keep a dangling byte for the next call. Output buffers are sized by the caller
 * with the *_max_out helpers (or the bounds documented next to each function).
 */

#define SK_ABI_VERSION 7
#define SK_RS_MAX_TAPS 96
#define SK_RS_CHUNK 512

int sk_abi_version(void);
/* SIMD path of the kernels: request -1 = best available, 0 = baseline (SSE2/NEON), 1 = AVX2 + FMA, 2 = the
 * same with AVX-512 VL and BW (32 vector registers, 16-bit permutes; x86-64, runtime-detected). Returns the
 * level now in use. Levels 1 and 2 give identical output. The G.711 and G.722 coders give identical output
 * at every level; the resampler's FMA kernels round once per multiply-add, so levels 1-2 may differ from
 * the baseline by 1 LSB on a few samples (each level is exact under any chunking). */
int sk_simd_level(int request);

/* ---- G.711 (stateless); n counts samples, pcm is 2*n bytes ---- */
void sk_ulaw_encode(const unsigned char *pcm, size_t n, unsigned char *out);
void sk_ulaw_decode(const unsigned char *in, size_t n, unsigned char *pcm);
void sk_alaw_encode(const unsigned char *pcm, size_t n, unsigned char *out);
void sk_alaw_decode(const unsigned char *in, size_t n, unsigned char *pcm);

/* ---- streaming polyphase FIR resampler ---- */
typedef struct {
    int32_t up;            /* L: interpolation factor */
    int32_t down;          /* M: decimation factor */
    int32_t taps;          /* K: taps per polyphase branch */
    int32_t t;             /* next output's position on the L-grid, relative to the next new sample */
    int32_t odd;           /* 1 when odd_byte holds the low byte of a sample split across calls */
    unsigned char odd_byte;
    const float *coef;     /* [up][taps] reversed branches, static tables */
    float buf[607];        /* SK_RS_MAX_TAPS - 1 history samples + SK_RS_CHUNK staged samples */
} sk_resampler;

/* Returns 0, or -1 when the pair is not among 8000/16000/24000. */
int sk_resampler_init(sk_resampler *r, int from_rate, int to_rate);
void sk_resampler_reset(sk_resampler *r);
/* Upper bound of output bytes for nbytes of input (never exceeded). */
size_t sk_resampler_max_out(const sk_resampler *r, size_t nbytes);
/* Returns the number of output bytes written (always even). */
size_t sk_resampler_process(sk_resampler *r, const unsigned char *in, size_t nbytes, unsigned char *out);
/* Input samples of delay (the filter's group delay), as a float in input samples. */
double sk_resampler_delay(const sk_resampler *r);

/* ---- G.722, 64 kbit/s mode ---- */
typedef struct {
    int32_t s;        /* predictor output s = sp + sz */
    int32_t sp;       /* pole part */
    int32_t sz;       /* zero part */
    int32_t r[2];     /* reconstructed signal r(n-1), r(n-2) */
    int32_t p[2];     /* partial reconstruction p(n-1), p(n-2) */
    int32_t a[2];     /* pole coefficients a1, a2 */
    int32_t d[6];     /* quantised difference d(n-1) .. d(n-6) */
    int32_t b[6];     /* zero coefficients b1 .. b6 */
    int32_t nb;       /* log scale factor */
    int32_t det;      /* scale factor */
} sk_g722_band;

typedef struct {
    int32_t x[24];    /* QMF delay line */
    sk_g722_band low;
    sk_g722_band high;
    int32_t odd;      /* bytes/samples held back: see sk_g722_encode */
    unsigned char odd_byte;
    int16_t held;     /* a 16 kHz sample waiting for its pair */
    int32_t have_held;
} sk_g722_encoder;

typedef struct {
    int32_t x[24];
    sk_g722_band low;
    sk_g722_band high;
} sk_g722_decoder;

void sk_g722_encoder_init(sk_g722_encoder *e);
void sk_g722_decoder_init(sk_g722_decoder *d);
/* 16 kHz PCM bytes -> codes; one output byte per two samples; odd bytes/samples carry over.
 * Output bound: nbytes / 4 + 1. Returns bytes written. */
size_t sk_g722_encode(sk_g722_encoder *e, const unsigned char *pcm, size_t nbytes, unsigned char *out);
/* Codes -> 16 kHz PCM bytes: 4 output bytes per code. Returns bytes written. */
size_t sk_g722_decode(sk_g722_decoder *d, const unsigned char *in, size_t n, unsigned char *pcm);

/* ---- fused per-frame paths between a payload and 24 kHz PCM16 ---- */
#define SK_CODEC_PCMU 0
#define SK_CODEC_PCMA 1
#define SK_CODEC_G722 2

typedef struct {
    int32_t codec;
    sk_resampler rs;
    sk_g722_decoder g722;
    unsigned char *out;    /* caller-owned output buffer of the *_push entry points */
} sk_dec24k;

typedef struct {
    int32_t codec;
    sk_resampler rs;
    sk_g722_encoder g722;
    unsigned char *out;
    double in_mean_square; /* of the PCM of the last sk_enc24k_push: the level of what is sent */
    int32_t staged;        /* G.722 pairs waiting for sk_enc24k_finish (sk_enc24k_stage) */
    const void *batch;     /* the sk_enc24k_batch listing this state until its finish, or NULL */
    int32_t stage_xl[256]; /* their sub-band samples (SK_ENC_STAGE) */
    int32_t stage_xh[256];
} sk_enc24k;

/* Returns 0, or -1 for an unknown codec. */
int sk_dec24k_init(sk_dec24k *d, int codec);
int sk_enc24k_init(sk_enc24k *e, int codec);
/* payload -> 24 kHz PCM16: exactly 6 output bytes per payload byte. Returns bytes written. */
size_t sk_dec24k_run(sk_dec24k *d, const unsigned char *payload, size_t n, unsigned char *out);
/* 24 kHz PCM16 -> payload: at most nbytes / 6 + 2 bytes. Returns bytes written. */
size_t sk_enc24k_run(sk_enc24k *e, const unsigned char *pcm, size_t nbytes, unsigned char *out);
/* The same into the buffer set in ->out (sized by the caller as above). Three arguments, not four,
 * because cffi's call overhead grows with the argument count (per-frame Python entry points).
 * sk_enc24k_push also sets ->in_mean_square (sk_mean_square of its input): a frame's level comes with
 * its encoding, with no second crossing of the FFI. */
size_t sk_dec24k_push(sk_dec24k *d, const unsigned char *payload, size_t n);
size_t sk_enc24k_push(sk_enc24k *e, const unsigned char *pcm, size_t nbytes);
/* The same frame of many calls, coded together: sk_enc24k_stage is sk_enc24k_push, except that for
 * G.722 it stops before the ADPCM, the frame's sub-band samples left in the state (->staged pairs, for
 * nbytes <= SK_ENC_STAGE_BYTES; a longer input is coded at once), and that it lists the state in the
 * batch. sk_enc24k_finish then codes every state the batch lists into its ->out, eight calls side by
 * side where the CPU allows, with the codes sk_enc24k_push would have written, and empties the batch.
 * sk_enc24k_stage returns the bytes ->out will then hold, or, staging nothing:
 * SK_BATCH_FINISH_FIRST when the state is already listed in this batch (its earlier frame is coded by
 * the finish, in order) or the batch is full, SK_BATCH_ELSEWHERE when another batch lists it.
 * A state pushed before its finish has its staged pairs coded first (their codes then overwritten).
 * The batch holds pointers: the caller keeps each listed state alive until the finish. */
#define SK_ENC_STAGE 256
#define SK_ENC_STAGE_BYTES 1500
#define SK_ENC_LANES 8 /* frames sk_enc24k_finish codes side by side */
#define SK_BATCH_MAX 64
#define SK_BATCH_FINISH_FIRST -1
#define SK_BATCH_ELSEWHERE -2
typedef struct {
    int32_t count;
    sk_enc24k *items[64]; /* SK_BATCH_MAX, in staging order */
} sk_enc24k_batch;
int64_t sk_enc24k_stage(sk_enc24k_batch *b, sk_enc24k *e, const unsigned char *pcm, size_t nbytes);
void sk_enc24k_finish(sk_enc24k_batch *b);

/* ---- level ---- */
/* Mean of the squared samples of n PCM16 samples (0.0 for n == 0), summed exactly in 64-bit integers. */
double sk_mean_square(const unsigned char *pcm, size_t n);

/* ---- one received 20 ms frame: 24 kHz PCM16, its mean square and base64 text, in one call ---- */
/* What the text carries in base64 (between a fixed head and tail, e.g. a JSON event around it). */
#define SK_TEXT_NONE 0
#define SK_TEXT_PCM 1      /* the decoded 24 kHz PCM16 */
#define SK_TEXT_PAYLOAD 2  /* the payload itself (G.711 passed through) */
#define SK_TEXT_MAX_HEAD 64
#define SK_TEXT_MAX_TAIL 16

typedef struct {
    sk_dec24k dec;         /* dec.out: the caller-owned PCM buffer, 6 bytes per payload byte */
    int32_t text_of;       /* SK_TEXT_* */
    int32_t head_len;
    int32_t tail_len;
    unsigned char head[64];  /* SK_TEXT_MAX_HEAD */
    unsigned char tail[16];  /* SK_TEXT_MAX_TAIL */
    unsigned char *text;   /* caller-owned: head_len + 8 * n + 4 + tail_len bytes for n payload bytes */
    size_t pcm_len;        /* bytes in dec.out after the last push */
    size_t text_len;       /* bytes in text after the last push */
    double mean_square;    /* of the PCM of the last payload decoded (what sk_frame_push returns) */
    int32_t staged;        /* G.722 payload bytes waiting for sk_frame_finish (sk_frame_stage) */
    const void *batch;     /* the sk_frame_batch listing this state until its finish, or NULL */
    unsigned char stage[256]; /* those bytes (SK_DEC_STAGE) */
} sk_frame_decoder;

/* Returns 0, or -1 for an unknown codec or text mode, or a head/tail longer than the maximum. Clears the
 * struct: set dec.out and text after it. */
int sk_frame_decoder_init(sk_frame_decoder *f, int codec, int text_of, const unsigned char *head,
                          size_t head_len, const unsigned char *tail, size_t tail_len);
/* Decodes a payload into dec.out exactly as sk_dec24k_push, writes the text (head, standard base64 with
 * padding, tail) unless SK_TEXT_NONE, and returns the mean square of the decoded PCM (sk_mean_square). */
double sk_frame_push(sk_frame_decoder *f, const unsigned char *payload, size_t n);
/* The same frame of many calls, decoded together: sk_frame_stage keeps a G.722 payload of at most
 * SK_DEC_STAGE bytes in the state (->staged), lists the state in the batch and returns how many the
 * batch now lists; any other payload it decodes at once as sk_frame_push, returning 0. It stages nothing
 * and returns SK_BATCH_FINISH_FIRST when the state is already listed in this batch or the batch is full,
 * SK_BATCH_ELSEWHERE when another batch lists it. sk_frame_finish then decodes every state the batch
 * lists, eight calls' ADPCM side by side where the CPU allows, into the outputs sk_frame_push would have
 * given (dec.out, text, ->mean_square), each frame's mean square also in mean_squares[i] (room for
 * SK_BATCH_MAX), and empties the batch. A state pushed before its finish has its staged payload decoded
 * first, so that its outputs are overwritten in order. The caller keeps each listed state alive until
 * the finish. */
#define SK_DEC_STAGE 256
typedef struct {
    int32_t count;
    sk_frame_decoder *items[64]; /* SK_BATCH_MAX, in staging order */
} sk_frame_batch;
int sk_frame_stage(sk_frame_batch *b, sk_frame_decoder *f, const unsigned char *payload, size_t n);
void sk_frame_finish(sk_frame_batch *b, double *mean_squares);
/* Standard base64 (RFC 4648, '+' '/', '=' padding) of n bytes: writes 4 * ceil(n / 3) bytes. */
size_t sk_base64(const unsigned char *in, size_t n, unsigned char *out);

/* ---- base64 ---- */
/* Strict RFC 4648 decoding (standard alphabet, '=' padding, n a multiple of 4, canonical trailing bits).
 * Writes at most n / 4 * 3 bytes; returns the count, or -1 for input that is not canonical base64. */
int64_t sk_b64_decode(const unsigned char *in, size_t n, unsigned char *out);
