/* Unit tests for the framing decoder (src/np_framing.c), on tests/harness.h. Most
 * tests are FRAMER_TESTs: they get a framer f and a collector c of what it delivers,
 * made before and freed after the body. */
#include "harness.h"
#include "np_framing.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------- frame collector ---------- */

typedef struct {
  char *data;
  size_t len;
} frame;

typedef struct {
  frame *frames;
  size_t count, cap;
  size_t stop_after; /* when non-zero: return stop_value once count reaches it */
  int stop_value;
} collector;

static void collector_init(collector *c) { memset(c, 0, sizeof(*c)); }

static void collector_free(collector *c) {
  size_t i;
  for (i = 0; i < c->count; i++) free(c->frames[i].data);
  free(c->frames);
  memset(c, 0, sizeof(*c));
}

static int collect(void *ctx, const char *data, size_t len) {
  collector *c = (collector *)ctx;
  /* no test expects this many frames: a decoder stuck in a loop fails instead of hanging */
  if (c->count >= 100000) {
    fprintf(stderr, "%s:%d: runaway decoder: more than %lu frames delivered\n", __FILE__,
            __LINE__, (unsigned long)c->count);
    exit(1);
  }
  if (c->count == c->cap) {
    size_t cap = c->cap ? c->cap * 2 : 16;
    frame *nf = (frame *)realloc(c->frames, cap * sizeof(*nf));
    if (nf == NULL) abort();
    c->frames = nf;
    c->cap = cap;
  }
  /* +1 so a zero-length frame still gets a real allocation */
  c->frames[c->count].data = (char *)malloc(len + 1);
  if (c->frames[c->count].data == NULL) abort();
  if (len) memcpy(c->frames[c->count].data, data, len);
  c->frames[c->count].len = len;
  c->count++;
  if (c->stop_after && c->count >= c->stop_after) return c->stop_value;
  return 0;
}

static int frame_is(const collector *c, size_t i, const char *s, size_t n) {
  return i < c->count && c->frames[i].len == n && memcmp(c->frames[i].data, s, n) == 0;
}

static int frame_is_str(const collector *c, size_t i, const char *s) {
  return frame_is(c, i, s, strlen(s));
}

static int feed_str(np_framer *f, const char *s, collector *c) {
  return np_framer_feed(f, s, strlen(s), collect, c);
}

/* Feeds n bytes one at a time; stops at the first non-zero result. */
static int feed_bytewise(np_framer *f, const char *s, size_t n, collector *c) {
  size_t i;
  for (i = 0; i < n; i++) {
    int rc = np_framer_feed(f, s + i, 1, collect, c);
    if (rc) return rc;
  }
  return 0;
}

/* A test with framer f (mode, max_message) and collector c, both pointers, made before
 * the body and freed after it. A body may free and init f again, for another round. */
#define FRAMER_TEST(name, mode, max)                       \
  static void name##_body(np_framer *f, collector *c);     \
  TEST_IMPL(name) {                                        \
    np_framer f;                                           \
    collector c;                                           \
    np_framer_init(&f, (mode), (max));                     \
    collector_init(&c);                                    \
    name##_body(&f, &c);                                   \
    collector_free(&c);                                    \
    np_framer_free(&f);                                    \
  }                                                        \
  static void name##_body(np_framer *f, collector *c)

/* ---------- PRNG (xorshift32, fixed seeds: repeatable) ---------- */

static uint32_t g_rng = 2463534242u;

static uint32_t rnd(void) {
  uint32_t x = g_rng;
  x ^= x << 13;
  x ^= x >> 17;
  x ^= x << 5;
  g_rng = x;
  return x;
}

/* ---------- a growable byte buffer for building streams ---------- */

typedef struct {
  char *p;
  size_t len, cap;
} sbuf;

static void sbuf_add(sbuf *b, const void *data, size_t n) {
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n) cap *= 2;
    b->p = (char *)realloc(b->p, cap);
    if (b->p == NULL) abort();
    b->cap = cap;
  }
  if (n) memcpy(b->p + b->len, data, n);
  b->len += n;
}

static void sbuf_add_message(sbuf *b, const void *data, size_t n) {
  char hdr[NP_MESSAGE_HEADER];
  np_message_header(hdr, (uint32_t)n);
  sbuf_add(b, hdr, sizeof(hdr));
  sbuf_add(b, data, n);
}

static void sbuf_free(sbuf *b) {
  free(b->p);
  memset(b, 0, sizeof(*b));
}

/* ======================= bytes mode ======================= */

FRAMER_TEST(bytes_passthrough, NP_FRAMING_BYTES, 16) {
  CHECK(feed_str(f, "hello", c) == 0);
  CHECK(feed_str(f, "a\nb\n", c) == 0);
  /* chunks are not bounded by max_message and not split or joined */
  CHECK(feed_str(f, "0123456789abcdefghijklmnop", c) == 0);
  CHECK(np_framer_feed(f, "x\0y", 3, collect, c) == 0);
  CHECK(c->count == 4);
  CHECK(frame_is_str(c, 0, "hello"));
  CHECK(frame_is_str(c, 1, "a\nb\n"));
  CHECK(frame_is_str(c, 2, "0123456789abcdefghijklmnop"));
  CHECK(frame_is(c, 3, "x\0y", 3));
  CHECK(np_framer_pending(f) == 0);
  CHECK(np_framer_finish(f, collect, c) == 0);
  CHECK(c->count == 4);
}

FRAMER_TEST(bytes_empty_feed, NP_FRAMING_BYTES, 16) {
  CHECK(np_framer_feed(f, "", 0, collect, c) == 0);
  CHECK(np_framer_feed(f, "abc", 0, collect, c) == 0);
  CHECK(c->count == 0);
  CHECK(np_framer_finish(f, collect, c) == 0);
  CHECK(c->count == 0);
}

/* ======================= lines mode ======================= */

FRAMER_TEST(lines_basic, NP_FRAMING_LINES, 100) {
  CHECK(feed_str(f, "a\nb\n", c) == 0);
  CHECK(c->count == 2);
  CHECK(frame_is_str(c, 0, "a"));
  CHECK(frame_is_str(c, 1, "b"));
  CHECK(np_framer_pending(f) == 0);
}

FRAMER_TEST(lines_crlf, NP_FRAMING_LINES, 100) {
  CHECK(feed_str(f, "one\r\ntwo\r\n\r\n", c) == 0);
  /* \r split from \n across feeds */
  CHECK(feed_str(f, "three\r", c) == 0);
  CHECK(feed_str(f, "\n", c) == 0);
  /* only one trailing \r is stripped; an inner \r is payload */
  CHECK(feed_str(f, "four\r\r\nfi\rve\n", c) == 0);
  CHECK(c->count == 6);
  CHECK(frame_is_str(c, 0, "one"));
  CHECK(frame_is_str(c, 1, "two"));
  CHECK(frame_is_str(c, 2, ""));
  CHECK(frame_is_str(c, 3, "three"));
  CHECK(frame_is_str(c, 4, "four\r"));
  CHECK(frame_is_str(c, 5, "fi\rve"));
  CHECK(np_framer_pending(f) == 0);
}

FRAMER_TEST(lines_split_across_feeds, NP_FRAMING_LINES, 100) {
  const char *line = "the quick brown fox jumps over the lazy dog";
  CHECK(feed_str(f, "the ", c) == 0);
  CHECK(feed_str(f, "quick ", c) == 0);
  CHECK(np_framer_feed(f, "", 0, collect, c) == 0);
  CHECK(feed_str(f, "brown fox ", c) == 0);
  CHECK(feed_str(f, "jumps over the lazy dog", c) == 0);
  CHECK(c->count == 0);
  CHECK(np_framer_pending(f) == strlen(line));
  CHECK(feed_str(f, "\nnext", c) == 0);
  CHECK(c->count == 1);
  CHECK(frame_is_str(c, 0, line));
  CHECK(np_framer_pending(f) == 4);
  CHECK(feed_str(f, "\n", c) == 0);
  CHECK(c->count == 2);
  CHECK(frame_is_str(c, 1, "next"));
  /* the same line byte by byte */
  CHECK(feed_bytewise(f, line, strlen(line), c) == 0);
  CHECK(c->count == 2);
  CHECK(feed_bytewise(f, "\r\n", 2, c) == 0);
  CHECK(c->count == 3);
  CHECK(frame_is_str(c, 2, line));
  CHECK(np_framer_pending(f) == 0);
}

/* A 200 KiB line in random pieces: the buffer grows past 64 KiB and is released. */
#define LONG_LINE (200 * 1024)
FRAMER_TEST(lines_long_line, NP_FRAMING_LINES, LONG_LINE) {
  const size_t big = LONG_LINE;
  char *line = (char *)malloc(big + 2);
  size_t i, off = 0;
  if (line == NULL) abort();
  g_rng = 0xDEADBEEFu;
  for (i = 0; i < big; i++) line[i] = (char)('a' + rnd() % 26);
  line[big] = '\r';
  line[big + 1] = '\n';
  while (off < big + 2) {
    size_t n = rnd() % 10000 + 1;
    if (n > big + 2 - off) n = big + 2 - off;
    CHECK(np_framer_feed(f, line + off, n, collect, c) == 0);
    off += n;
  }
  CHECK(feed_str(f, "short\n", c) == 0);
  CHECK(c->count == 2);
  CHECK(frame_is(c, 0, line, big));
  CHECK(frame_is_str(c, 1, "short"));
  CHECK(np_framer_pending(f) == 0);
  free(line);
}

/* 1000 frames in one feed (lines or messages, as f's mode), all delivered by that call. */
static void check_many_in_one_feed(np_framer *f, collector *c) {
  sbuf s = {0};
  char tmp[32];
  int i;
  for (i = 0; i < 1000; i++) {
    int n = sprintf(tmp, "frame %d", i);
    if (f->mode == NP_FRAMING_LINES) {
      sbuf_add(&s, tmp, (size_t)n);
      sbuf_add(&s, "\n", 1);
    } else {
      sbuf_add_message(&s, tmp, (size_t)n);
    }
  }
  CHECK(np_framer_feed(f, s.p, s.len, collect, c) == 0);
  CHECK(c->count == 1000);
  for (i = 0; i < 1000 && (size_t)i < c->count; i++) {
    sprintf(tmp, "frame %d", i);
    CHECK(frame_is_str(c, (size_t)i, tmp));
  }
  CHECK(np_framer_pending(f) == 0);
  sbuf_free(&s);
}

FRAMER_TEST(lines_many_in_one_feed, NP_FRAMING_LINES, 100) { check_many_in_one_feed(f, c); }

FRAMER_TEST(lines_empty_line, NP_FRAMING_LINES, 100) {
  CHECK(feed_str(f, "\n", c) == 0);
  CHECK(feed_str(f, "\n\nx\n\n", c) == 0);
  CHECK(feed_str(f, "\r\n", c) == 0);
  CHECK(c->count == 6);
  CHECK(frame_is_str(c, 0, ""));
  CHECK(frame_is_str(c, 1, ""));
  CHECK(frame_is_str(c, 2, ""));
  CHECK(frame_is_str(c, 3, "x"));
  CHECK(frame_is_str(c, 4, ""));
  CHECK(frame_is_str(c, 5, ""));
  CHECK(np_framer_pending(f) == 0);
}

FRAMER_TEST(lines_finish_unterminated, NP_FRAMING_LINES, 100) {
  CHECK(feed_str(f, "first\nlast", c) == 0);
  CHECK(c->count == 1);
  CHECK(np_framer_pending(f) == 4);
  CHECK(np_framer_finish(f, collect, c) == 0);
  CHECK(c->count == 2);
  CHECK(frame_is_str(c, 1, "last"));
  CHECK(np_framer_pending(f) == 0);
  /* a second finish delivers nothing more */
  CHECK(np_framer_finish(f, collect, c) == 0);
  CHECK(c->count == 2);
  np_framer_free(f);

  /* an unterminated last line ending in \r: the \r is stripped */
  np_framer_init(f, NP_FRAMING_LINES, 100);
  CHECK(feed_str(f, "tail\r", c) == 0);
  CHECK(np_framer_finish(f, collect, c) == 0);
  CHECK(c->count == 3);
  CHECK(frame_is_str(c, 2, "tail"));
  np_framer_free(f);

  /* finish with nothing pending delivers nothing */
  np_framer_init(f, NP_FRAMING_LINES, 100);
  CHECK(feed_str(f, "done\n", c) == 0);
  CHECK(np_framer_finish(f, collect, c) == 0);
  CHECK(c->count == 4);
}

FRAMER_TEST(lines_too_big, NP_FRAMING_LINES, 5) {
  /* whole line in one feed */
  CHECK(feed_str(f, "123456\n", c) == NP_FRAME_ETOOBIG);
  CHECK(f->announced == 6);
  CHECK(c->count == 0);
  np_framer_free(f);

  /* unterminated but already too long */
  np_framer_init(f, NP_FRAMING_LINES, 5);
  CHECK(feed_str(f, "1234567", c) == NP_FRAME_ETOOBIG);
  CHECK(f->announced == 7);
  CHECK(c->count == 0);
  np_framer_free(f);

  /* byte by byte: the error comes exactly at byte max+1, not before */
  {
    const char *s = "123456";
    int rc = 0;
    size_t i;
    np_framer_init(f, NP_FRAMING_LINES, 5);
    for (i = 0; i < 5; i++) CHECK(np_framer_feed(f, s + i, 1, collect, c) == 0);
    rc = np_framer_feed(f, s + 5, 1, collect, c);
    CHECK(rc == NP_FRAME_ETOOBIG);
    CHECK(f->announced == 6);
    CHECK(c->count == 0);
    CHECK(np_framer_pending(f) <= 5); /* the buffer stays bounded */
    np_framer_free(f);
  }

  /* after good lines, a later long line still fails, and earlier ones were delivered */
  np_framer_init(f, NP_FRAMING_LINES, 5);
  CHECK(feed_str(f, "ab\n", c) == 0);
  CHECK(feed_str(f, "abc", c) == 0);
  CHECK(feed_str(f, "def\n", c) == NP_FRAME_ETOOBIG);
  CHECK(f->announced == 6);
  CHECK(c->count == 1);
  CHECK(frame_is_str(c, 0, "ab"));
  np_framer_free(f);

  /* max+1 bytes where the extra byte is a \r not at the end: still payload */
  np_framer_init(f, NP_FRAMING_LINES, 5);
  CHECK(feed_str(f, "12345\r", c) == 0); /* could still be a \r\n */
  CHECK(feed_str(f, "x", c) == NP_FRAME_ETOOBIG);
  CHECK(c->count == 1);
  np_framer_free(f);

  /* "12345\r\r\n" is the 6-byte line "12345\r" */
  np_framer_init(f, NP_FRAMING_LINES, 5);
  CHECK(feed_str(f, "12345\r\r\n", c) == NP_FRAME_ETOOBIG);
  CHECK(c->count == 1);
}

FRAMER_TEST(lines_exact_max, NP_FRAMING_LINES, 5) {
  CHECK(feed_str(f, "12345\n", c) == 0);
  CHECK(feed_str(f, "abcde\r\n", c) == 0);
  CHECK(feed_bytewise(f, "ABCDE\n", 6, c) == 0);
  CHECK(feed_bytewise(f, "vwxyz\r\n", 7, c) == 0);
  CHECK(feed_str(f, "pqrst\r", c) == 0);
  CHECK(feed_str(f, "\n", c) == 0);
  CHECK(feed_str(f, "KLM", c) == 0);
  CHECK(feed_str(f, "NO\r\n", c) == 0);
  CHECK(feed_str(f, "fghij", c) == 0); /* unterminated, delivered by finish */
  CHECK(np_framer_finish(f, collect, c) == 0);
  CHECK(c->count == 7);
  CHECK(frame_is_str(c, 0, "12345"));
  CHECK(frame_is_str(c, 1, "abcde"));
  CHECK(frame_is_str(c, 2, "ABCDE"));
  CHECK(frame_is_str(c, 3, "vwxyz"));
  CHECK(frame_is_str(c, 4, "pqrst"));
  CHECK(frame_is_str(c, 5, "KLMNO"));
  CHECK(frame_is_str(c, 6, "fghij"));
  CHECK(np_framer_pending(f) == 0);
  np_framer_free(f);

  /* unterminated exactly-max line ending in \r, delivered by finish */
  np_framer_init(f, NP_FRAMING_LINES, 5);
  CHECK(feed_bytewise(f, "12345\r", 6, c) == 0);
  CHECK(np_framer_finish(f, collect, c) == 0);
  CHECK(c->count == 8);
  CHECK(frame_is_str(c, 7, "12345"));
}

/* ======================= message mode ======================= */

FRAMER_TEST(message_basic, NP_FRAMING_MESSAGE, 1000) {
  sbuf s = {0};
  sbuf_add_message(&s, "hello", 5);
  sbuf_add_message(&s, "a\nb\0c", 5);
  CHECK(s.len == 18);
  CHECK(memcmp(s.p, "\0\0\0\5hello", 9) == 0);
  CHECK(np_framer_feed(f, s.p, s.len, collect, c) == 0);
  CHECK(c->count == 2);
  CHECK(frame_is_str(c, 0, "hello"));
  CHECK(frame_is(c, 1, "a\nb\0c", 5));
  CHECK(np_framer_pending(f) == 0);
  CHECK(np_framer_finish(f, collect, c) == 0);
  sbuf_free(&s);
}

TEST_IMPL(message_header_encoding) {
  char h[NP_MESSAGE_HEADER];
  np_message_header(h, 0x01020304u);
  CHECK(memcmp(h, "\1\2\3\4", 4) == 0);
  np_message_header(h, 0xFFFFFFFFu);
  CHECK(memcmp(h, "\377\377\377\377", 4) == 0);
  np_message_header(h, 0);
  CHECK(memcmp(h, "\0\0\0\0", 4) == 0);
  np_message_header(h, 300);
  CHECK(memcmp(h, "\0\0\1\54", 4) == 0);
}

FRAMER_TEST(message_zero_length, NP_FRAMING_MESSAGE, 1000) {
  sbuf s = {0};
  sbuf_add_message(&s, "", 0);
  sbuf_add_message(&s, "x", 1);
  sbuf_add_message(&s, "", 0);
  CHECK(np_framer_feed(f, s.p, s.len, collect, c) == 0);
  CHECK(c->count == 3);
  CHECK(frame_is_str(c, 0, ""));
  CHECK(frame_is_str(c, 1, "x"));
  CHECK(frame_is_str(c, 2, ""));
  /* a zero-length message alone, and byte by byte */
  CHECK(np_framer_feed(f, s.p, 4, collect, c) == 0);
  CHECK(c->count == 4);
  CHECK(frame_is_str(c, 3, ""));
  CHECK(feed_bytewise(f, s.p, s.len, c) == 0);
  CHECK(c->count == 7);
  CHECK(frame_is_str(c, 4, ""));
  CHECK(frame_is_str(c, 5, "x"));
  CHECK(frame_is_str(c, 6, ""));
  CHECK(np_framer_pending(f) == 0);
  CHECK(np_framer_finish(f, collect, c) == 0);
  sbuf_free(&s);
}

static int check_message_stream(const collector *c) {
  return c->count == 4 && frame_is_str(c, 0, "first message") && frame_is_str(c, 1, "") &&
         frame_is_str(c, 2, "3rd") && frame_is_str(c, 3, "the fourth and last");
}

TEST_IMPL(message_split_every_offset) {
  sbuf s = {0};
  size_t i, j;
  sbuf_add_message(&s, "first message", 13);
  sbuf_add_message(&s, "", 0);
  sbuf_add_message(&s, "3rd", 3);
  sbuf_add_message(&s, "the fourth and last", 19);

  /* two pieces: [0,i) [i,len) */
  for (i = 0; i <= s.len; i++) {
    np_framer f;
    collector c;
    int ok;
    np_framer_init(&f, NP_FRAMING_MESSAGE, 100);
    collector_init(&c);
    CHECK(np_framer_feed(&f, s.p, i, collect, &c) == 0);
    CHECK(np_framer_feed(&f, s.p + i, s.len - i, collect, &c) == 0);
    ok = check_message_stream(&c) && np_framer_pending(&f) == 0 &&
         np_framer_finish(&f, collect, &c) == 0;
    if (!ok) fprintf(stderr, "  split at offset %lu failed\n", (unsigned long)i);
    CHECK(ok);
    collector_free(&c);
    np_framer_free(&f);
  }

  /* three pieces: [0,i) [i,j) [j,len) */
  for (i = 0; i <= s.len; i++) {
    for (j = i; j <= s.len; j++) {
      np_framer f;
      collector c;
      int ok;
      np_framer_init(&f, NP_FRAMING_MESSAGE, 100);
      collector_init(&c);
      CHECK(np_framer_feed(&f, s.p, i, collect, &c) == 0);
      CHECK(np_framer_feed(&f, s.p + i, j - i, collect, &c) == 0);
      CHECK(np_framer_feed(&f, s.p + j, s.len - j, collect, &c) == 0);
      ok = check_message_stream(&c) && np_framer_pending(&f) == 0;
      if (!ok) fprintf(stderr, "  split at offsets %lu,%lu failed\n", (unsigned long)i, (unsigned long)j);
      CHECK(ok);
      collector_free(&c);
      np_framer_free(&f);
    }
  }
  sbuf_free(&s);
}

FRAMER_TEST(message_many_in_one_feed, NP_FRAMING_MESSAGE, 100) { check_many_in_one_feed(f, c); }

TEST_IMPL(message_1mib_random_pieces) {
  const size_t big = 1024 * 1024;
  np_framer f;
  collector c;
  sbuf s = {0};
  char *payload = (char *)malloc(big);
  size_t i, off;
  int round;
  if (payload == NULL) abort();
  g_rng = 0x9E3779B9u;
  for (i = 0; i < big; i++) payload[i] = (char)(rnd() >> 24);
  sbuf_add_message(&s, payload, big);
  sbuf_add_message(&s, "after", 5);

  for (round = 0; round < 3; round++) {
    np_framer_init(&f, NP_FRAMING_MESSAGE, big);
    collector_init(&c);
    off = 0;
    while (off < s.len) {
      /* piece sizes vary widely: tiny, medium, large */
      size_t limit = (rnd() % 3 == 0) ? 16 : (rnd() % 2 ? 4096 : 200000);
      size_t n = rnd() % limit + 1;
      if (n > s.len - off) n = s.len - off;
      CHECK(np_framer_feed(&f, s.p + off, n, collect, &c) == 0);
      off += n;
    }
    CHECK(c.count == 2);
    CHECK(frame_is(&c, 0, payload, big));
    CHECK(frame_is_str(&c, 1, "after"));
    CHECK(np_framer_pending(&f) == 0);
    CHECK(np_framer_finish(&f, collect, &c) == 0);
    collector_free(&c);
    np_framer_free(&f);
  }
  free(payload);
  sbuf_free(&s);
}

FRAMER_TEST(message_too_big, NP_FRAMING_MESSAGE, 1000) {
  char h[NP_MESSAGE_HEADER];

  /* 0xFFFFFFFF in one feed, with no payload at all */
  np_message_header(h, 0xFFFFFFFFu);
  CHECK(np_framer_feed(f, h, 4, collect, c) == NP_FRAME_ETOOBIG);
  CHECK(f->announced == 0xFFFFFFFFu);
  CHECK(c->count == 0);
  np_framer_free(f);

  /* the header byte by byte: the error comes with the 4th byte, not before */
  np_framer_init(f, NP_FRAMING_MESSAGE, 1000);
  CHECK(np_framer_feed(f, h, 1, collect, c) == 0);
  CHECK(np_framer_feed(f, h + 1, 1, collect, c) == 0);
  CHECK(np_framer_feed(f, h + 2, 1, collect, c) == 0);
  CHECK(np_framer_feed(f, h + 3, 1, collect, c) == NP_FRAME_ETOOBIG);
  CHECK(f->announced == 0xFFFFFFFFu);
  CHECK(c->count == 0);
  np_framer_free(f);

  /* max+1 after a good message; exactly max is accepted */
  {
    sbuf s = {0};
    char payload[1001];
    memset(payload, 'z', sizeof(payload));
    np_framer_init(f, NP_FRAMING_MESSAGE, 1000);
    sbuf_add_message(&s, payload, 1000);
    sbuf_add_message(&s, payload, 1001);
    CHECK(np_framer_feed(f, s.p, s.len, collect, c) == NP_FRAME_ETOOBIG);
    CHECK(f->announced == 1001);
    CHECK(c->count == 1);
    CHECK(frame_is(c, 0, payload, 1000));
    sbuf_free(&s);
    np_framer_free(f);
  }

  /* a header completing exactly at the end of a feed is checked at once */
  np_framer_init(f, NP_FRAMING_MESSAGE, 10);
  np_message_header(h, 11);
  CHECK(np_framer_feed(f, h, 2, collect, c) == 0);
  CHECK(np_framer_feed(f, h + 2, 2, collect, c) == NP_FRAME_ETOOBIG);
  CHECK(f->announced == 11);
  CHECK(c->count == 1);
}

FRAMER_TEST(message_finish_partial, NP_FRAMING_MESSAGE, 100) {
  char text[160];
  sbuf s = {0};
  sbuf_add_message(&s, "payload!", 8);

  /* half a header */
  CHECK(np_framer_feed(f, s.p, 2, collect, c) == 0);
  CHECK(np_framer_pending(f) == 2);
  CHECK(np_framer_finish(f, collect, c) == NP_FRAME_EPARTIAL);
  CHECK(c->count == 0);
  np_framer_partial_text(f, text, sizeof text);
  CHECK(strcmp(text, "end of stream inside a message header (2 of 4 header bytes missing)") == 0);
  np_framer_free(f);

  /* a whole header, no payload */
  np_framer_init(f, NP_FRAMING_MESSAGE, 100);
  CHECK(np_framer_feed(f, s.p, 4, collect, c) == 0);
  CHECK(np_framer_pending(f) == 4);
  CHECK(np_framer_finish(f, collect, c) == NP_FRAME_EPARTIAL);
  CHECK(f->announced == 8);
  CHECK(c->count == 0);
  np_framer_free(f);

  /* half a payload */
  np_framer_init(f, NP_FRAMING_MESSAGE, 100);
  CHECK(np_framer_feed(f, s.p, 8, collect, c) == 0);
  CHECK(np_framer_pending(f) == 8);
  CHECK(np_framer_finish(f, collect, c) == NP_FRAME_EPARTIAL);
  CHECK(f->announced == 8);
  CHECK(c->count == 0);
  /* the header is not payload: 4 of the 8 announced payload bytes came */
  np_framer_partial_text(f, text, sizeof text);
  CHECK(strcmp(text, "end of stream inside a message (4 of 8 payload bytes missing)") == 0);
  np_framer_free(f);

  /* complete messages then half of another */
  np_framer_init(f, NP_FRAMING_MESSAGE, 100);
  CHECK(np_framer_feed(f, s.p, s.len, collect, c) == 0);
  CHECK(np_framer_feed(f, s.p, s.len - 1, collect, c) == 0);
  CHECK(c->count == 1);
  CHECK(np_framer_finish(f, collect, c) == NP_FRAME_EPARTIAL);
  CHECK(c->count == 1);
  np_framer_free(f);

  sbuf_free(&s);
}

FRAMER_TEST(message_finish_complete, NP_FRAMING_MESSAGE, 100) {
  sbuf s = {0};
  sbuf_add_message(&s, "one", 3);
  sbuf_add_message(&s, "", 0);
  sbuf_add_message(&s, "three", 5);

  CHECK(np_framer_finish(f, collect, c) == 0); /* nothing fed at all */
  CHECK(np_framer_feed(f, s.p, s.len, collect, c) == 0);
  CHECK(np_framer_pending(f) == 0);
  CHECK(np_framer_finish(f, collect, c) == 0);
  CHECK(c->count == 3);
  np_framer_free(f);

  np_framer_init(f, NP_FRAMING_MESSAGE, 100);
  CHECK(feed_bytewise(f, s.p, s.len, c) == 0);
  CHECK(np_framer_finish(f, collect, c) == 0);
  CHECK(c->count == 6);
  np_framer_free(f);

  sbuf_free(&s);
}

/* ======================= callback stop ======================= */

FRAMER_TEST(callback_stop, NP_FRAMING_LINES, 100) {
  sbuf s = {0};

  /* lines */
  c->stop_after = 1;
  c->stop_value = 7;
  CHECK(feed_str(f, "a\nb\nc\n", c) == 7);
  CHECK(c->count == 1);
  CHECK(frame_is_str(c, 0, "a"));
  collector_free(c);
  np_framer_free(f);

  /* lines, the stopping frame came from the buffer */
  np_framer_init(f, NP_FRAMING_LINES, 100);
  collector_init(c);
  c->stop_after = 2;
  c->stop_value = 42;
  CHECK(feed_str(f, "a\nb", c) == 0);
  CHECK(feed_str(f, "b\nc\nd\n", c) == 42);
  CHECK(c->count == 2);
  CHECK(frame_is_str(c, 1, "bb"));
  collector_free(c);
  np_framer_free(f);

  /* lines, finish returns the stop value too */
  np_framer_init(f, NP_FRAMING_LINES, 100);
  collector_init(c);
  c->stop_after = 1;
  c->stop_value = 3;
  CHECK(feed_str(f, "tail", c) == 0);
  CHECK(np_framer_finish(f, collect, c) == 3);
  CHECK(c->count == 1);
  collector_free(c);
  np_framer_free(f);

  /* message, zero-copy path and buffered path */
  sbuf_add_message(&s, "m1", 2);
  sbuf_add_message(&s, "m2", 2);
  sbuf_add_message(&s, "m3", 2);
  np_framer_init(f, NP_FRAMING_MESSAGE, 100);
  collector_init(c);
  c->stop_after = 2;
  c->stop_value = -99;
  CHECK(np_framer_feed(f, s.p, s.len, collect, c) == -99);
  CHECK(c->count == 2);
  CHECK(frame_is_str(c, 1, "m2"));
  collector_free(c);
  np_framer_free(f);

  np_framer_init(f, NP_FRAMING_MESSAGE, 100);
  collector_init(c);
  c->stop_after = 1;
  c->stop_value = 5;
  CHECK(np_framer_feed(f, s.p, 5, collect, c) == 0); /* header + 1 payload byte */
  CHECK(np_framer_feed(f, s.p + 5, s.len - 5, collect, c) == 5);
  CHECK(c->count == 1);
  CHECK(frame_is_str(c, 0, "m1"));
  collector_free(c);
  np_framer_free(f);

  /* bytes */
  np_framer_init(f, NP_FRAMING_BYTES, 100);
  collector_init(c);
  c->stop_after = 1;
  c->stop_value = 9;
  CHECK(feed_str(f, "abc", c) == 9);
  CHECK(c->count == 1);
  collector_free(c);
  np_framer_free(f);

  sbuf_free(&s);
}

/* ======================= randomized property test ======================= */

#define PROP_FRAMES 2000
#define PROP_MAXLEN 300

/* Decodes stream in pieces (byte by byte when bytewise) and checks the frames. */
static void prop_decode(np_framing_mode mode, const sbuf *stream, frame *orig, size_t n,
                        int bytewise) {
  np_framer f;
  collector c;
  size_t off = 0, i, mismatches = 0;
  int rc = 0;
  np_framer_init(&f, mode, PROP_MAXLEN);
  collector_init(&c);
  while (off < stream->len && rc == 0) {
    size_t k;
    if (bytewise) {
      k = 1;
    } else {
      uint32_t r = rnd() % 8;
      if (r == 0) k = 0; /* an empty feed now and then */
      else if (r < 4) k = rnd() % 8 + 1;
      else if (r < 7) k = rnd() % 400 + 1;
      else k = rnd() % 5000 + 1;
      if (k > stream->len - off) k = stream->len - off;
    }
    rc = np_framer_feed(&f, stream->p + off, k, collect, &c);
    off += k;
  }
  CHECK(rc == 0);
  CHECK(np_framer_finish(&f, collect, &c) == 0);
  CHECK(np_framer_pending(&f) == 0);
  CHECK(c.count == n);
  for (i = 0; i < n && i < c.count; i++) {
    if (!frame_is(&c, i, orig[i].data, orig[i].len)) {
      if (mismatches++ < 3)
        fprintf(stderr, "  %s %s: frame %lu differs (len %lu, got %lu)\n", mode == NP_FRAMING_LINES ? "lines" : "message",
                bytewise ? "bytewise" : "random splits", (unsigned long)i,
                (unsigned long)orig[i].len, (unsigned long)c.frames[i].len);
    }
  }
  CHECK(mismatches == 0);
  collector_free(&c);
  np_framer_free(&f);
}

static void prop_mode(np_framing_mode mode, uint32_t seed) {
  frame *orig = (frame *)calloc(PROP_FRAMES, sizeof(*orig));
  sbuf stream = {0};
  size_t i, j;
  if (orig == NULL) abort();
  g_rng = seed;
  for (i = 0; i < PROP_FRAMES; i++) {
    /* lengths 0..300, with the edges over-represented */
    uint32_t r = rnd() % 10;
    size_t len = r == 0 ? 0 : r == 1 ? PROP_MAXLEN : rnd() % (PROP_MAXLEN + 1);
    orig[i].data = (char *)malloc(len + 1);
    if (orig[i].data == NULL) abort();
    orig[i].len = len;
    for (j = 0; j < len; j++) {
      char ch;
      /* plenty of \r and \0 to exercise the edge cases */
      uint32_t k = rnd() % 16;
      if (k == 0) ch = '\r';
      else if (k == 1) ch = '\0';
      else ch = (char)(rnd() & 0xFF);
      if (mode == NP_FRAMING_LINES && ch == '\n') ch = 'n';
      orig[i].data[j] = ch;
    }
    if (mode == NP_FRAMING_LINES) {
      sbuf_add(&stream, orig[i].data, len);
      /* a frame ending in \r needs \r\n, otherwise pick either terminator */
      if ((len > 0 && orig[i].data[len - 1] == '\r') || rnd() % 2)
        sbuf_add(&stream, "\r\n", 2);
      else
        sbuf_add(&stream, "\n", 1);
    } else {
      sbuf_add_message(&stream, orig[i].data, len);
    }
  }
  prop_decode(mode, &stream, orig, PROP_FRAMES, 1);
  prop_decode(mode, &stream, orig, PROP_FRAMES, 0);
  prop_decode(mode, &stream, orig, PROP_FRAMES, 0);
  for (i = 0; i < PROP_FRAMES; i++) free(orig[i].data);
  free(orig);
  sbuf_free(&stream);
}

TEST_IMPL(property_lines) { prop_mode(NP_FRAMING_LINES, 0x12345678u); }
static void test_property_message(void) { prop_mode(NP_FRAMING_MESSAGE, 0xCAFEBABEu); }

/* ======================= names ======================= */

static void test_framing_names(void) {
  CHECK(np_framing_parse("bytes") == NP_FRAMING_BYTES);
  CHECK(np_framing_parse("lines") == NP_FRAMING_LINES);
  CHECK(np_framing_parse("message") == NP_FRAMING_MESSAGE);
  CHECK(np_framing_parse("") == -1);
  CHECK(np_framing_parse("line") == -1);
  CHECK(np_framing_parse("messages") == -1);
  CHECK(np_framing_parse("Lines") == -1);
  CHECK(np_framing_parse("bytes ") == -1);
  CHECK(np_framing_parse("json") == -1);
}

/* ======================= main ======================= */

static const test_entry TESTS[] = {
    TEST_ENTRY(bytes_passthrough),
    TEST_ENTRY(bytes_empty_feed),
    TEST_ENTRY(lines_basic),
    TEST_ENTRY(lines_crlf),
    TEST_ENTRY(lines_split_across_feeds),
    TEST_ENTRY(lines_long_line),
    TEST_ENTRY(lines_many_in_one_feed),
    TEST_ENTRY(lines_empty_line),
    TEST_ENTRY(lines_finish_unterminated),
    TEST_ENTRY(lines_too_big),
    TEST_ENTRY(lines_exact_max),
    TEST_ENTRY(message_basic),
    TEST_ENTRY(message_header_encoding),
    TEST_ENTRY(message_zero_length),
    TEST_ENTRY(message_split_every_offset),
    TEST_ENTRY(message_many_in_one_feed),
    TEST_ENTRY(message_1mib_random_pieces),
    TEST_ENTRY(message_too_big),
    TEST_ENTRY(message_finish_partial),
    TEST_ENTRY(message_finish_complete),
    TEST_ENTRY(callback_stop),
    TEST_ENTRY(property_lines),
    TEST_ENTRY(property_message),
    TEST_ENTRY(framing_names),
};

int main(int argc, char **argv) { return run_tests(TESTS, TEST_COUNT(TESTS), argc, argv); }
