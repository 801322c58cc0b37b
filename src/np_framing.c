#include "np_framing.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void np_framer_init(np_framer *f, np_framing_mode mode, size_t max_message) {
  memset(f, 0, sizeof(*f));
  f->mode = (uint8_t)mode;
  f->max_message = max_message;
}

void np_framer_free(np_framer *f) {
  free(f->buf);
  f->buf = NULL;
  f->len = 0;
  f->cap_log2 = 0;
}

size_t np_framer_pending(const np_framer *f) { return f->len + f->hdr_len; }

void np_framer_partial_text(const np_framer *f, char *out, size_t outlen) {
  if (f->hdr_len < NP_MESSAGE_HEADER)
    snprintf(out, outlen, "end of stream inside a message header (%zu of %d header bytes missing)",
             (size_t)(NP_MESSAGE_HEADER - f->hdr_len), NP_MESSAGE_HEADER);
  else
    snprintf(out, outlen, "end of stream inside a message (%zu of %zu payload bytes missing)",
             (size_t)f->want - f->len, (size_t)f->want);
}

void np_message_header(char out[NP_MESSAGE_HEADER], uint32_t len) {
  out[0] = (char)(len >> 24);
  out[1] = (char)(len >> 16);
  out[2] = (char)(len >> 8);
  out[3] = (char)len;
}

int np_framing_parse(const char *name) {
  if (strcmp(name, "bytes") == 0) return NP_FRAMING_BYTES;
  if (strcmp(name, "lines") == 0) return NP_FRAMING_LINES;
  if (strcmp(name, "message") == 0) return NP_FRAMING_MESSAGE;
  return -1;
}

/* Grows the partial-frame buffer; the bound keeps a hostile peer from making it huge. */
static int append(np_framer *f, const char *data, size_t n) {
  if (n == 0) return 0;
  size_t cap = f->cap_log2 ? (size_t)1 << f->cap_log2 : 0;
  if (f->len + n > cap) {
    unsigned shift = f->cap_log2 ? f->cap_log2 : 8; /* 256 bytes at first */
    while (((size_t)1 << shift) < f->len + n) shift++;
    char *nb = realloc(f->buf, (size_t)1 << shift);
    if (nb == NULL) abort(); /* out of memory: nothing sane to do in a decoder */
    f->buf = nb;
    f->cap_log2 = (uint8_t)shift;
  }
  memcpy(f->buf + f->len, data, n);
  f->len += n;
  return 0;
}

/* Delivers a buffered frame and forgets it; large buffers are released so that an
 * idle connection does not keep the memory of its biggest message. */
static int deliver_buffered(np_framer *f, size_t n, np_frame_cb cb, void *ctx) {
  int rc = cb(ctx, f->buf, n);
  f->len = 0;
  if (f->cap_log2 > 16) np_framer_free(f); /* over 64 KiB */
  return rc;
}

static size_t line_len(const char *p, size_t n) {
  return (n > 0 && p[n - 1] == '\r') ? n - 1 : n;
}

static int feed_lines(np_framer *f, const char **pdata, size_t len, np_frame_cb cb, void *ctx) {
  const char *data = *pdata;
  int rc = 0;
  while (len > 0 && rc == 0) {
    const char *nl = memchr(data, '\n', len);
    size_t take = nl ? (size_t)(nl - data) : len;
    size_t total = f->len + take;
    char last = take ? data[take - 1] : (f->len ? f->buf[f->len - 1] : 0);
    /* an unterminated line may still end in \r, which is not payload */
    size_t payload = last == '\r' ? total - 1 : total;
    if (payload > f->max_message) {
      f->announced = payload;
      return NP_FRAME_ETOOBIG;
    }
    if (nl == NULL) {
      append(f, data, len);
      data += len;
      break;
    }
    const char *line = data;
    data += take + 1;
    len -= take + 1;
    if (f->len == 0) {
      rc = cb(ctx, line, line_len(line, take));
    } else {
      append(f, line, take);
      rc = deliver_buffered(f, line_len(f->buf, f->len), cb, ctx);
    }
  }
  *pdata = data;
  return rc;
}

/* Consumes header bytes; returns how many were used. */
static size_t take_header(np_framer *f, const char *data, size_t len) {
  size_t n = NP_MESSAGE_HEADER - f->hdr_len;
  if (n > len) n = len;
  memcpy(f->hdr + f->hdr_len, data, n);
  f->hdr_len = (uint8_t)(f->hdr_len + n);
  if (f->hdr_len == NP_MESSAGE_HEADER) {
    f->want = ((uint32_t)f->hdr[0] << 24) | ((uint32_t)f->hdr[1] << 16) |
              ((uint32_t)f->hdr[2] << 8) | (uint32_t)f->hdr[3];
  }
  return n;
}

static int feed_message(np_framer *f, const char **pdata, size_t len, np_frame_cb cb, void *ctx) {
  const char *data = *pdata;
  int rc = 0;
  while (len > 0 && rc == 0) {
    if (f->hdr_len < NP_MESSAGE_HEADER) {
      size_t n = take_header(f, data, len);
      data += n;
      len -= n;
      if (f->hdr_len < NP_MESSAGE_HEADER) break;
      if (f->want > f->max_message) {
        f->announced = f->want;
        return NP_FRAME_ETOOBIG;
      }
    }
    if (f->len == 0 && len >= f->want) { /* whole payload in hand: no copy */
      rc = cb(ctx, data, f->want);
      data += f->want;
      len -= f->want;
    } else {
      size_t n = f->want - f->len;
      if (n > len) n = len;
      append(f, data, n);
      data += n;
      len -= n;
      if (f->len < f->want) break;
      rc = deliver_buffered(f, f->want, cb, ctx);
    }
    f->hdr_len = 0;
  }
  *pdata = data;
  return rc;
}

int np_framer_feed_some(np_framer *f, const char *data, size_t len, np_frame_cb cb, void *ctx, size_t *used) {
  const char *at = data;
  int rc;
  switch (f->mode) {
    case NP_FRAMING_LINES: rc = feed_lines(f, &at, len, cb, ctx); break;
    case NP_FRAMING_MESSAGE: rc = feed_message(f, &at, len, cb, ctx); break;
    default:
      rc = len ? cb(ctx, data, len) : 0;
      at = data + len;
  }
  *used = (size_t)(at - data);
  return rc;
}

int np_framer_feed(np_framer *f, const char *data, size_t len, np_frame_cb cb, void *ctx) {
  size_t used;
  return np_framer_feed_some(f, data, len, cb, ctx, &used);
}

int np_framer_finish(np_framer *f, np_frame_cb cb, void *ctx) {
  if (f->mode == NP_FRAMING_LINES && f->len > 0)
    return deliver_buffered(f, line_len(f->buf, f->len), cb, ctx);
  if (f->mode == NP_FRAMING_MESSAGE && np_framer_pending(f) > 0) {
    f->announced = f->hdr_len == NP_MESSAGE_HEADER ? f->want : 0;
    return NP_FRAME_EPARTIAL;
  }
  return 0;
}
