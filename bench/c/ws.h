/* Shared pieces of the benchmark tools: SHA-1, base64, RFC 6455 framing,
 * bounded buffers, a tiny JSON string scanner and HTTP header lookup.
 * libc and Linux only; C11. */
#ifndef BENCH_WS_H
#define BENCH_WS_H

#include <stddef.h>
#include <stdint.h>

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define WS_KEY_MAX 128 /* longest Sec-WebSocket-Key either tool accepts */

uint64_t now_ns(void); /* CLOCK_MONOTONIC */

void sha1(const void *data, size_t len, uint8_t out[20]);
/* Writes 4*ceil(len/3) characters plus a NUL; returns the characters written. */
size_t base64_encode(const uint8_t *in, size_t len, char *out);
/* Sec-WebSocket-Accept for a key of at most WS_KEY_MAX bytes: 28 chars + NUL. */
void ws_accept_key(const char *key, size_t key_len, char out[29]);

/* A byte buffer holding data[start, len), growing (doubling) up to max. */
struct buf {
    uint8_t *data;
    size_t start, len, cap, init, max;
};
/* alloc_now = 0: the first buf_reserve allocates `init` bytes. -1 on ENOMEM. */
int buf_init(struct buf *b, size_t init, size_t max, int alloc_now);
void buf_free(struct buf *b);
/* Make room for `extra` bytes after len (compacting, then growing); -1 over max. */
int buf_reserve(struct buf *b, size_t extra);
void buf_consume(struct buf *b, size_t n);
static inline size_t buf_used(const struct buf *b) { return b->len - b->start; }

enum { WS_CONT = 0, WS_TEXT = 1, WS_BIN = 2, WS_CLOSE = 8, WS_PING = 9, WS_PONG = 10 };

struct ws_frame {
    unsigned fin, rsv, opcode, masked;
    uint64_t len; /* payload length */
    uint8_t mask[4];
    size_t hdr; /* header length, mask key included */
};
/* 1: header parsed (the payload may still be incomplete); 0: need more bytes;
 * -1: protocol error (RSV bits, unknown opcode, bad control frame, length). */
int ws_parse(const uint8_t *p, size_t n, struct ws_frame *f);
/* Writes a FIN frame header (2..14 bytes); mask == NULL: unmasked. */
size_t ws_header(uint8_t *out, unsigned opcode, uint64_t len, const uint8_t *mask);
void ws_mask(uint8_t *p, size_t n, const uint8_t mask[4]);

/* Finds `qkey` (a quoted key, e.g. "\"event_id\"") followed by optional
 * whitespace, ':', optional whitespace and a string; sets the raw (still
 * escaped) string contents. 1 if found. */
int json_str(const uint8_t *p, size_t n, const char *qkey, const uint8_t **v, size_t *vlen);

/* Header `name` (case-insensitive) in an HTTP head (first line skipped);
 * the value with surrounding blanks trimmed. 1 if found. */
int http_header(const char *head, size_t n, const char *name, const char **v, size_t *vlen);
/* Case-insensitive: does v[0..vlen) contain the NUL-terminated `needle`? */
int ci_contains(const char *v, size_t vlen, const char *needle);

uint64_t xorshift64(uint64_t *state); /* xorshift64*; state must be non-zero */
uint64_t random_seed(void);           /* getrandom(), falling back to time ^ pid */
long raise_nofile(void);              /* soft RLIMIT_NOFILE := hard; the new limit */
/* Decimal digits of v into out (no NUL); returns the count (at most 20). */
size_t utoa(uint64_t v, char *out);

/* SHA-1, base64, accept-key, framing and scanner test vectors; the failures. */
int ws_selftest(void);

#endif
