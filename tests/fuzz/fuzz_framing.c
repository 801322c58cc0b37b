/* libFuzzer target for the framing decoder. The first byte picks the mode and the
 * feed sizes; the rest is the stream. Every frame must respect max_message, and in
 * message mode re-encoding the frames must give back exactly the consumed bytes. */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "np_framing.h"

#define MAX_MESSAGE 512

typedef struct {
  char out[1 << 16];
  size_t len;
  size_t frames;
  int bounded; /* lines and messages are bounded by max_message; byte chunks are not */
} sink;

static int collect(void *ctx, const char *data, size_t len) {
  sink *s = ctx;
  assert(len <= MAX_MESSAGE || !s->bounded);
  if (s->len + NP_MESSAGE_HEADER + len <= sizeof s->out) {
    np_message_header(s->out + s->len, (uint32_t)len);
    memcpy(s->out + s->len + NP_MESSAGE_HEADER, data, len);
    s->len += NP_MESSAGE_HEADER + len;
  }
  s->frames++;
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  np_framing_mode mode = (np_framing_mode)(data[0] % 3);
  size_t step = 1 + (data[0] >> 2);
  data++;
  size--;
  np_framer f;
  np_framer_init(&f, mode, MAX_MESSAGE);
  static sink s;
  s.len = 0;
  s.frames = 0;
  s.bounded = mode != NP_FRAMING_BYTES;
  int rc = 0;
  size_t fed = 0;
  while (fed < size && rc == 0) {
    size_t n = size - fed < step ? size - fed : step;
    rc = np_framer_feed(&f, (const char *)data + fed, n, collect, &s);
    fed += n;
  }
  if (rc == 0) rc = np_framer_finish(&f, collect, &s);
  assert(rc == 0 || rc == NP_FRAME_ETOOBIG || rc == NP_FRAME_EPARTIAL);
  if (mode == NP_FRAMING_MESSAGE && rc == 0 && s.len < sizeof s.out - 1024) {
    assert(s.len == size && memcmp(s.out, data, size) == 0);
  }
  np_framer_free(&f);
  return 0;
}
