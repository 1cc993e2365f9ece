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

static inline int clamp_int(int v, int lo, int hi)
{
    return v < lo ? lo : (v > hi ? hi : v);
}

static inline int sat16(int v)
{
    return clamp_int(v, -32768, 32767);
}

unsigned char sk_ulaw_from_linear(int sample);
int sk_ulaw_to_linear(unsigned char code);
unsigned char sk_alaw_from_linear(int sample);
int sk_alaw_to_linear(unsigned char code);
/* Streams n native samples (no odd-byte handling) through the resampler. */
size_t sk_resampler_run(sk_resampler *r, const int16_t *in, size_t n, int16_t *out);
/* One 64 kbit/s code from a pair of 16 kHz samples, and back. */
unsigned char sk_g722_encode_pair(sk_g722_encoder *e, int x0, int x1);
void sk_g722_decode_code(sk_g722_decoder *d, unsigned char code, int16_t out[2]);
