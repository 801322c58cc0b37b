/* Framing decoder: turns a byte stream into chunks, lines or messages.
 * Plain C, no libuv and no Lua, so it can be unit-tested and fuzzed alone. */
#ifndef NP_FRAMING_H
#define NP_FRAMING_H

#include <stddef.h>
#include <stdint.h>

typedef enum { NP_FRAMING_BYTES = 0, NP_FRAMING_LINES = 1, NP_FRAMING_MESSAGE = 2 } np_framing_mode;

/* Decoder errors (negative, so they never collide with a callback's stop value). */
#define NP_FRAME_ETOOBIG (-1)   /* a line or message is larger than max_message */
#define NP_FRAME_EPARTIAL (-2)  /* end of stream in the middle of a message */

#define NP_MESSAGE_HEADER 4     /* message mode: 4-byte big-endian length */

/* Called once per complete frame. A non-zero return stops the feed at once
 * (the receiver was closed from inside the callback) and is returned by np_framer_feed. */
typedef int (*np_frame_cb)(void *ctx, const char *data, size_t len);

/* One per connection, so kept small (issue 13's idle memory): a message's length is
 * 32 bits on the wire, and buf's capacity is a power of two. */
typedef struct np_framer {
  char *buf;           /* bytes of an incomplete frame */
  size_t len;
  size_t max_message;  /* bound on one line or message payload */
  uint64_t announced;  /* the length of the frame that broke the bound (for error text) */
  uint32_t want;       /* message mode: payload length, valid once hdr_len == 4 */
  unsigned char hdr[NP_MESSAGE_HEADER]; /* message mode: header bytes seen so far */
  uint8_t mode;        /* an np_framing_mode */
  uint8_t hdr_len;
  uint8_t cap_log2;    /* buf holds 1 << cap_log2 bytes; 0: no buf */
} np_framer;

void np_framer_init(np_framer *f, np_framing_mode mode, size_t max_message);
void np_framer_free(np_framer *f);

/* Feeds len bytes; calls cb for each complete frame. Returns 0, a decoder error,
 * or the callback's non-zero stop value. After a decoder error the framer must not be fed again. */
int np_framer_feed(np_framer *f, const char *data, size_t len, np_frame_cb cb, void *ctx);
/* The same, and *used tells how many bytes were consumed: after a stop by the callback
 * the rest (data + *used) has not been looked at, so a receiver that stopped to catch
 * its breath can feed it later. */
int np_framer_feed_some(np_framer *f, const char *data, size_t len, np_frame_cb cb, void *ctx, size_t *used);

/* End of stream: in lines mode a last unterminated line is delivered; in message mode
 * a partial message gives NP_FRAME_EPARTIAL. */
int np_framer_finish(np_framer *f, np_frame_cb cb, void *ctx);

/* Bytes held for an incomplete frame (what a disconnect discards). */
size_t np_framer_pending(const np_framer *f);

/* After NP_FRAME_EPARTIAL: what was missing, as text ("end of stream inside a message (N of
 * M payload bytes missing)", or "... message header (N of 4 header bytes missing)"). */
void np_framer_partial_text(const np_framer *f, char *out, size_t outlen);

/* Writes the 4-byte big-endian header for a message of len bytes. */
void np_message_header(char out[NP_MESSAGE_HEADER], uint32_t len);

/* Parses a framing name ("bytes", "lines", "message"); -1 when unknown. */
int np_framing_parse(const char *name);

#endif
