#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "ws.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- SHA-1 (FIPS 180-4) ------------------------------------------------ */

static uint32_t rol32(uint32_t x, unsigned n) { return (x << n) | (x >> (32 - n)); }

static void sha1_block(uint32_t h[5], const uint8_t *p)
{
    uint32_t w[80];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | (uint32_t)p[4 * i + 3];
    for (int i = 16; i < 80; i++)
        w[i] = rol32(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
    for (int i = 0; i < 80; i++) {
        uint32_t f, k;
        if (i < 20) {
            f = (b & c) | (~b & d);
            k = 0x5A827999u;
        } else if (i < 40) {
            f = b ^ c ^ d;
            k = 0x6ED9EBA1u;
        } else if (i < 60) {
            f = (b & c) | (b & d) | (c & d);
            k = 0x8F1BBCDCu;
        } else {
            f = b ^ c ^ d;
            k = 0xCA62C1D6u;
        }
        uint32_t t = rol32(a, 5) + f + e + k + w[i];
        e = d;
        d = c;
        c = rol32(b, 30);
        b = a;
        a = t;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
}

void sha1(const void *data, size_t len, uint8_t out[20])
{
    uint32_t h[5] = {0x67452301u, 0xEFCDAB89u, 0x98BADCFEu, 0x10325476u, 0xC3D2E1F0u};
    const uint8_t *p = data;
    size_t n = len;
    for (; n >= 64; p += 64, n -= 64)
        sha1_block(h, p);
    uint8_t tail[128] = {0};
    if (n)
        memcpy(tail, p, n);
    tail[n] = 0x80;
    size_t tl = n < 56 ? 64 : 128;
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++)
        tail[tl - 1 - (size_t)i] = (uint8_t)(bits >> (8 * i));
    sha1_block(h, tail);
    if (tl == 128)
        sha1_block(h, tail + 64);
    for (int i = 0; i < 5; i++) {
        out[4 * i] = (uint8_t)(h[i] >> 24);
        out[4 * i + 1] = (uint8_t)(h[i] >> 16);
        out[4 * i + 2] = (uint8_t)(h[i] >> 8);
        out[4 * i + 3] = (uint8_t)h[i];
    }
}

/* ---- base64 (RFC 4648, with padding) ------------------------------------ */

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t base64_encode(const uint8_t *in, size_t len, char *out)
{
    size_t o = 0, i = 0;
    for (; i + 3 <= len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = B64[v >> 18];
        out[o++] = B64[(v >> 12) & 63];
        out[o++] = B64[(v >> 6) & 63];
        out[o++] = B64[v & 63];
    }
    if (len - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = B64[v >> 18];
        out[o++] = B64[(v >> 12) & 63];
        out[o++] = '=';
        out[o++] = '=';
    } else if (len - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = B64[v >> 18];
        out[o++] = B64[(v >> 12) & 63];
        out[o++] = B64[(v >> 6) & 63];
        out[o++] = '=';
    }
    out[o] = '\0';
    return o;
}

void ws_accept_key(const char *key, size_t key_len, char out[29])
{
    char tmp[WS_KEY_MAX + sizeof WS_GUID];
    if (key_len > WS_KEY_MAX)
        key_len = WS_KEY_MAX;
    memcpy(tmp, key, key_len);
    memcpy(tmp + key_len, WS_GUID, sizeof WS_GUID - 1);
    uint8_t digest[20];
    sha1(tmp, key_len + sizeof WS_GUID - 1, digest);
    base64_encode(digest, sizeof digest, out);
}

/* ---- bounded buffers ----------------------------------------------------- */

int buf_init(struct buf *b, size_t init, size_t max, int alloc_now)
{
    b->data = NULL;
    b->start = b->len = b->cap = 0;
    b->init = init;
    b->max = max;
    if (alloc_now) {
        b->data = malloc(init);
        if (!b->data)
            return -1;
        b->cap = init;
    }
    return 0;
}

void buf_free(struct buf *b)
{
    free(b->data);
    b->data = NULL;
    b->start = b->len = b->cap = 0;
}

int buf_reserve(struct buf *b, size_t extra)
{
    if (b->cap - b->len >= extra)
        return 0;
    size_t used = b->len - b->start;
    if (b->start) {
        memmove(b->data, b->data + b->start, used);
        b->start = 0;
        b->len = used;
        if (b->cap - used >= extra)
            return 0;
    }
    if (used > b->max || extra > b->max - used)
        return -1;
    size_t need = used + extra, nc = b->cap ? b->cap : b->init;
    while (nc < need)
        nc *= 2;
    if (nc > b->max)
        nc = b->max;
    uint8_t *p = realloc(b->data, nc);
    if (!p)
        return -1;
    b->data = p;
    b->cap = nc;
    return 0;
}

void buf_consume(struct buf *b, size_t n)
{
    b->start += n;
    if (b->start >= b->len)
        b->start = b->len = 0;
}

/* ---- RFC 6455 framing ------------------------------------------------------ */

int ws_parse(const uint8_t *p, size_t n, struct ws_frame *f)
{
    if (n < 2)
        return 0;
    f->fin = p[0] >> 7;
    f->rsv = (p[0] >> 4) & 7u;
    f->opcode = p[0] & 15u;
    f->masked = p[1] >> 7;
    uint64_t len = p[1] & 127u;
    size_t h = 2;
    if (len == 126) {
        if (n < 4)
            return 0;
        len = (uint64_t)p[2] << 8 | p[3];
        h = 4;
    } else if (len == 127) {
        if (n < 10)
            return 0;
        len = 0;
        for (int i = 0; i < 8; i++)
            len = len << 8 | p[2 + i];
        h = 10;
        if (len >> 63)
            return -1;
    }
    if (f->masked) {
        if (n < h + 4)
            return 0;
        memcpy(f->mask, p + h, 4);
        h += 4;
    }
    f->len = len;
    f->hdr = h;
    if (f->rsv) /* no extension was negotiated */
        return -1;
    switch (f->opcode) {
    case WS_CONT:
    case WS_TEXT:
    case WS_BIN:
        return 1;
    case WS_CLOSE:
    case WS_PING:
    case WS_PONG:
        return f->fin && len <= 125 ? 1 : -1;
    default:
        return -1;
    }
}

size_t ws_header(uint8_t *out, unsigned opcode, uint64_t len, const uint8_t *mask)
{
    uint8_t m = mask ? 0x80 : 0;
    size_t h;
    out[0] = (uint8_t)(0x80u | opcode);
    if (len < 126) {
        out[1] = (uint8_t)(m | len);
        h = 2;
    } else if (len < 65536) {
        out[1] = (uint8_t)(m | 126);
        out[2] = (uint8_t)(len >> 8);
        out[3] = (uint8_t)len;
        h = 4;
    } else {
        out[1] = (uint8_t)(m | 127);
        for (int i = 0; i < 8; i++)
            out[2 + i] = (uint8_t)(len >> (56 - 8 * i));
        h = 10;
    }
    if (mask) {
        memcpy(out + h, mask, 4);
        h += 4;
    }
    return h;
}

void ws_mask(uint8_t *p, size_t n, const uint8_t mask[4])
{
    uint8_t mb[8];
    uint64_t m8;
    memcpy(mb, mask, 4);
    memcpy(mb + 4, mask, 4);
    memcpy(&m8, mb, 8);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v;
        memcpy(&v, p + i, 8);
        v ^= m8;
        memcpy(p + i, &v, 8);
    }
    for (; i < n; i++)
        p[i] ^= mask[i & 3];
}

/* ---- scanning ------------------------------------------------------------- */

static int is_blank(uint8_t c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

int json_str(const uint8_t *p, size_t n, const char *qkey, const uint8_t **v, size_t *vlen)
{
    size_t kl = strlen(qkey);
    const uint8_t *end = p + n, *s = p;
    while (s < end) {
        const uint8_t *k = memmem(s, (size_t)(end - s), qkey, kl);
        if (!k)
            return 0;
        const uint8_t *q = k + kl;
        while (q < end && is_blank(*q))
            q++;
        if (q < end && *q == ':') {
            q++;
            while (q < end && is_blank(*q))
                q++;
            if (q < end && *q == '"') {
                const uint8_t *start = ++q;
                for (;;) {
                    const uint8_t *e = memchr(q, '"', (size_t)(end - q));
                    if (!e)
                        return 0;
                    size_t bs = 0;
                    for (const uint8_t *b = e; b > start && b[-1] == '\\'; b--)
                        bs++;
                    if (bs % 2 == 0) {
                        *v = start;
                        *vlen = (size_t)(e - start);
                        return 1;
                    }
                    q = e + 1;
                }
            }
        }
        s = k + 1;
    }
    return 0;
}

int http_header(const char *head, size_t n, const char *name, const char **v, size_t *vlen)
{
    size_t nl = strlen(name);
    const char *end = head + n;
    const char *p = memchr(head, '\n', n);
    if (!p)
        return 0;
    for (p++; p < end;) {
        const char *e = memchr(p, '\n', (size_t)(end - p));
        if (!e)
            e = end;
        const char *le = e;
        if (le > p && le[-1] == '\r')
            le--;
        if ((size_t)(le - p) > nl && p[nl] == ':' && strncasecmp(p, name, nl) == 0) {
            const char *a = p + nl + 1, *b = le;
            while (a < b && (*a == ' ' || *a == '\t'))
                a++;
            while (b > a && (b[-1] == ' ' || b[-1] == '\t'))
                b--;
            *v = a;
            *vlen = (size_t)(b - a);
            return 1;
        }
        p = e + 1;
    }
    return 0;
}

int ci_contains(const char *v, size_t vlen, const char *needle)
{
    size_t nl = strlen(needle);
    for (size_t i = 0; i + nl <= vlen; i++)
        if (strncasecmp(v + i, needle, nl) == 0)
            return 1;
    return 0;
}

/* ---- misc ------------------------------------------------------------------ */

uint64_t xorshift64(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

uint64_t random_seed(void)
{
    uint64_t s = 0;
    if (getrandom(&s, sizeof s, 0) != (ssize_t)sizeof s)
        s = now_ns() ^ ((uint64_t)getpid() << 32);
    return s ? s : 0x9E3779B97F4A7C15ULL;
}

long raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return -1;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            getrlimit(RLIMIT_NOFILE, &rl);
    }
    return rl.rlim_cur == RLIM_INFINITY ? 1L << 20 : (long)rl.rlim_cur;
}

size_t utoa(uint64_t v, char *out)
{
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}

/* ---- self test -------------------------------------------------------------- */

static int check(int ok, const char *what)
{
    if (!ok)
        fprintf(stderr, "selftest FAILED: %s\n", what);
    return !ok;
}

static void hex(const uint8_t *d, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
}

int ws_selftest(void)
{
    int fails = 0;
    static const struct {
        const char *in;
        const char *sha1;
    } sv[] = {
        {"", "da39a3ee5e6b4b0d3255bfef95601890afd80709"},
        {"abc", "a9993e364706816aba3e25717850c26c9cd0d89d"},
        {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
         "84983e441c3bd26ebaae4aa1f95129e5e54670f1"},
        {"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu",
         "a49b2446a02c645bf419f995b67091253a04a259"},
        {"The quick brown fox jumps over the lazy dog",
         "2fd4e1c67a2d28fced849ee1bb76e7391b93eb12"},
    };
    uint8_t d[20];
    char hx[41];
    for (size_t i = 0; i < sizeof sv / sizeof sv[0]; i++) {
        sha1(sv[i].in, strlen(sv[i].in), d);
        hex(d, 20, hx);
        fails += check(strcmp(hx, sv[i].sha1) == 0, sv[i].in);
    }
    char *million = malloc(1000000);
    if (million) {
        memset(million, 'a', 1000000);
        sha1(million, 1000000, d);
        hex(d, 20, hx);
        fails += check(strcmp(hx, "34aa973cd4c4daa4f61eeb2bdbad27316534016f") == 0,
                       "sha1 of a million 'a'");
        free(million);
    }

    static const char *const bv[][2] = {{"", ""},         {"f", "Zg=="},         {"fo", "Zm8="},
                                        {"foo", "Zm9v"},  {"foob", "Zm9vYg=="}, {"fooba", "Zm9vYmE="},
                                        {"foobar", "Zm9vYmFy"}};
    char b64[16];
    for (size_t i = 0; i < sizeof bv / sizeof bv[0]; i++) {
        size_t n = base64_encode((const uint8_t *)bv[i][0], strlen(bv[i][0]), b64);
        fails += check(n == strlen(bv[i][1]) && strcmp(b64, bv[i][1]) == 0, bv[i][1]);
    }

    char acc[29];
    ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==", 24, acc); /* RFC 6455, section 1.3 */
    fails += check(strcmp(acc, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") == 0, "RFC 6455 accept key");

    static const uint64_t lens[] = {0, 1, 125, 126, 127, 65535, 65536, 100000};
    uint8_t hdr[14];
    static const uint8_t mk[4] = {0x37, 0xfa, 0x21, 0x3d};
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        for (int masked = 0; masked < 2; masked++) {
            size_t h = ws_header(hdr, WS_TEXT, lens[i], masked ? mk : NULL);
            struct ws_frame f;
            int r = ws_parse(hdr, h, &f);
            fails += check(r == 1 && f.hdr == h && f.len == lens[i] && f.fin &&
                               f.opcode == WS_TEXT && f.masked == (unsigned)masked &&
                               (!masked || memcmp(f.mask, mk, 4) == 0),
                           "frame header round trip");
            fails += check(h == 0 || ws_parse(hdr, h - 1, &f) == 0, "incomplete header");
        }
    }
    /* RFC 6455 section 5.7: a masked "Hello". */
    static const uint8_t hello[] = {0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d,
                                    0x7f, 0x9f, 0x4d, 0x51, 0x58};
    struct ws_frame f;
    uint8_t tmp[sizeof hello];
    memcpy(tmp, hello, sizeof hello);
    fails += check(ws_parse(tmp, sizeof tmp, &f) == 1 && f.len == 5 && f.hdr == 6, "hello header");
    ws_mask(tmp + 6, 5, f.mask);
    fails += check(memcmp(tmp + 6, "Hello", 5) == 0, "hello unmask");
    uint8_t big[37];
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (uint8_t)i;
    ws_mask(big, sizeof big, mk);
    ws_mask(big, sizeof big, mk);
    int same = 1;
    for (size_t i = 0; i < sizeof big; i++)
        same &= big[i] == (uint8_t)i;
    fails += check(same, "mask twice is identity");
    static const uint8_t ctrl_long[] = {0x89, 126, 0, 200};
    fails += check(ws_parse(ctrl_long, sizeof ctrl_long, &f) == -1, "long ping rejected");
    static const uint8_t rsv[] = {0xC1, 0};
    fails += check(ws_parse(rsv, sizeof rsv, &f) == -1, "RSV1 rejected");

    const char *j1 = "{\"type\":\"x\",\"event_id\":\"a\\\"b\",\"audio\": \"QUJD\"}";
    const uint8_t *v;
    size_t vl;
    fails += check(json_str((const uint8_t *)j1, strlen(j1), "\"event_id\"", &v, &vl) == 1 &&
                       vl == 4 && memcmp(v, "a\\\"b", 4) == 0,
                   "json escaped string");
    fails += check(json_str((const uint8_t *)j1, strlen(j1), "\"audio\"", &v, &vl) == 1 &&
                       vl == 4 && memcmp(v, "QUJD", 4) == 0,
                   "json spaced string");
    const char *j2 = "{\"note\":\"\\\"audio\\\"\", \"audio\" : \"x\"}";
    fails += check(json_str((const uint8_t *)j2, strlen(j2), "\"audio\"", &v, &vl) == 1 &&
                       vl == 1 && v[0] == 'x',
                   "json key inside a value skipped");

    const char *head = "HTTP/1.1 101 Switching Protocols\r\nupgrade:  WebSocket \r\n"
                       "Sec-WebSocket-Accept: abc\r\n\r\n";
    const char *hv;
    fails += check(http_header(head, strlen(head), "Upgrade", &hv, &vl) == 1 && vl == 9 &&
                       ci_contains(hv, vl, "websocket"),
                   "http header lookup");
    fails += check(http_header(head, strlen(head), "Sec-WebSocket-Extensions", &hv, &vl) == 0,
                   "absent http header");

    char num[20];
    fails += check(utoa(0, num) == 1 && num[0] == '0', "utoa 0");
    fails += check(utoa(18446744073709551615ULL, num) == 20 &&
                       memcmp(num, "18446744073709551615", 20) == 0,
                   "utoa max");
    if (!fails)
        fprintf(stderr, "selftest ok\n");
    return fails;
}
