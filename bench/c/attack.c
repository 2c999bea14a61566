/* attack: N hostile WebSocket sessions against a relay, for the isolation
 * benchmark. Each session connects, waits for its first message
 * (session.created), then sends one kind of abuse as fast as the socket takes
 * it, reading and discarding whatever comes back; when the server ends the
 * session, it reconnects at once. Single-threaded epoll + timerfd. See
 * README.md. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "ws.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#define HS_MAX ((size_t)16384)    /* response head */
#define FIRST_MAX ((size_t)65536) /* the first message (session.created) */
#define IN_INIT ((size_t)16384)
#define IN_MAX (FIRST_MAX + 8192)
#define BLOCK ((size_t)65536)          /* ping / tiny streams: one block of frames */
#define WAKE_BYTES ((size_t)1 << 20)   /* written per session per wake-up, at most */
#define MAX_EVENTS 256
#define TAG_TIMER UINT64_MAX
#define TAG_SIGNAL (UINT64_MAX - 1)
#define NS 1000000000ULL
#define TICK_NS 1000000ULL /* 1 ms: reconnects and deadlines */
#define MAX_CODES 32

enum { M_PING, M_TINY, M_LARGE, M_FRAGMENTS, M_JSON_KEYS, M_JSON_ARRAY, M_READ, M_N };
static const char *const MODE[M_N] = {"ping",      "tiny",       "large", "fragments",
                                      "json-keys", "json-array", "read"};

enum { S_WAIT, S_CONNECTING, S_HS, S_FIRST, S_UP };

struct sess {
    int fd, state;
    uint32_t events;
    uint64_t retry_at; /* S_WAIT: when to reconnect */
    uint64_t deadline; /* before S_UP: when the handshake has failed */
    size_t req_off, hs_scan;
    char req[4096];
    size_t req_len;
    char accept[29];
    struct buf in;
    uint64_t skip; /* payload bytes of the current server frame still to discard */
    uint64_t pos;  /* position in the attack stream */
};

static struct {
    char host[256], hostport[300], port[16], path[2048];
    char *extra; /* "Name: value\r\n"... */
    int mode;
    long sessions;
    size_t size, piece, fragment;
    uint64_t duration_ns, retry_ns, connect_timeout_ns;
    const char *out;
    struct sockaddr_storage addr;
    socklen_t addrlen;
} cfg;

static struct sess *S;
static int ep = -1, stopping;
static uint64_t rng, t_start;
static uint8_t *stream; /* the attack's bytes, sent over and over */
static size_t stream_len, stream_messages;

static struct {
    uint64_t connects, connect_failures, handshakes, bad_handshakes, timeouts, up,
        first_message_failures, eof, protocol_errors, bytes_out, bytes_in, writes,
        streams_out, frames_in;
    uint64_t status[600];
    int codes[MAX_CODES];
    uint64_t code_n[MAX_CODES], code_other;
} st;

/* ---- attack streams ---- */

/* Appends a masked frame header (FIN or not) and its masked payload. */
static size_t put_frame(uint8_t *out, unsigned opcode, int fin, const uint8_t *pl, size_t len)
{
    uint8_t m[4];
    uint64_t r = xorshift64(&rng);
    memcpy(m, &r, 4);
    size_t h = ws_header(out, opcode, len, m);
    if (!fin)
        out[0] &= 0x7f;
    memcpy(out + h, pl, len);
    ws_mask(out + h, len, m);
    return h + len;
}

/* The JSON document of a message mode, at most `size` bytes; its length. */
static size_t build_document(int mode, size_t size, uint8_t *doc)
{
    size_t n = 0;
#define PUT(s)                                                                                    \
    do {                                                                                          \
        memcpy(doc + n, s, sizeof(s) - 1);                                                        \
        n += sizeof(s) - 1;                                                                       \
    } while (0)
    if (mode == M_LARGE || mode == M_FRAGMENTS) {
        /* An append with as much (silent) base64 audio as fits. */
        static const char head[] = "{\"type\":\"input_audio_buffer.append\",\"audio\":\"";
        size_t audio = (size - (sizeof head - 1) - 2) / 4 * 4;
        PUT(head);
        memset(doc + n, 'A', audio);
        n += audio;
        PUT("\"}");
    } else if (mode == M_JSON_KEYS) {
        /* As many distinct members as fit: ,"0000000":0 is 12 bytes each. */
        static const char head[] = "{\"type\":\"response.cancel\"";
        size_t keys = (size - (sizeof head - 1) - 1) / 12;
        PUT(head);
        for (size_t k = 0; k < keys; k++) {
            char key[24];
            snprintf(key, sizeof key, ",\"%07zu\":0", k % 10000000);
            memcpy(doc + n, key, 12);
            n += 12;
        }
        PUT("}");
    } else { /* M_JSON_ARRAY: as many array elements as fit, 2 bytes each */
        static const char head[] = "{\"type\":\"response.cancel\",\"a\":[0";
        size_t more = (size - (sizeof head - 1) - 2) / 2;
        PUT(head);
        for (size_t k = 0; k < more; k++) {
            doc[n++] = ',';
            doc[n++] = '0';
        }
        PUT("]}");
    }
#undef PUT
    return n;
}

/* Builds the stream of `mode` into `stream` (malloc'd); -1 on ENOMEM. */
static int build_stream(int mode, size_t size, size_t fragment)
{
    free(stream);
    stream = NULL;
    stream_len = stream_messages = 0;
    if (mode == M_READ)
        return 0;
    if (mode == M_PING || mode == M_TINY) {
        stream = malloc(BLOCK);
        if (!stream)
            return -1;
        size_t fl = mode == M_PING ? 6 : 8;
        for (size_t k = 0; k + fl <= BLOCK; k += fl) {
            stream_len += put_frame(stream + k, mode == M_PING ? WS_PING : WS_TEXT, 1,
                                    (const uint8_t *)"{}", mode == M_PING ? 0 : 2);
            stream_messages++;
        }
        return 0;
    }
    uint8_t *doc = malloc(size + 64);
    if (!doc)
        return -1;
    size_t dl = build_document(mode, size, doc);
    size_t frames = mode == M_FRAGMENTS ? (dl + fragment - 1) / fragment : 1;
    stream = malloc(dl + 14 * frames);
    if (!stream) {
        free(doc);
        return -1;
    }
    if (mode != M_FRAGMENTS) {
        stream_len = put_frame(stream, WS_TEXT, 1, doc, dl);
    } else {
        for (size_t k = 0, off = 0; off < dl; k++, off += fragment) {
            size_t len = dl - off < fragment ? dl - off : fragment;
            stream_len += put_frame(stream + stream_len, k ? WS_CONT : WS_TEXT,
                                    off + len == dl, doc + off, len);
        }
    }
    stream_messages = 1;
    free(doc);
    return 0;
}

/* ---- sessions ---- */

static void set_events(struct sess *s, uint32_t events)
{
    if (s->events == events)
        return;
    struct epoll_event ev = {.events = events, .data.u64 = (uint64_t)(s - S)};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev) == 0)
        s->events = events;
}

static void count_close(int code)
{
    for (int i = 0; i < MAX_CODES; i++) {
        if (st.codes[i] == code || st.codes[i] == 0) {
            st.codes[i] = code;
            st.code_n[i]++;
            return;
        }
    }
    st.code_other++;
}

/* The session ends; it reconnects after `delay_ns`. */
static void end_session(struct sess *s, uint64_t delay_ns)
{
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
    s->state = S_WAIT;
    s->retry_at = now_ns() + delay_ns;
    buf_free(&s->in);
}

static void open_session(struct sess *s, uint64_t now)
{
    st.connects++;
    int fd = socket(cfg.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        st.connect_failures++;
        s->retry_at = now + cfg.retry_ns;
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    s->fd = fd;
    s->state = S_CONNECTING;
    s->deadline = now + cfg.connect_timeout_ns;
    s->hs_scan = s->req_off = 0;
    s->skip = s->pos = 0;
    struct epoll_event ev = {.events = EPOLLOUT, .data.u64 = (uint64_t)(s - S)};
    s->events = EPOLLOUT;
    if (buf_init(&s->in, IN_INIT, IN_MAX, 1) < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0 ||
        (connect(fd, (struct sockaddr *)&cfg.addr, cfg.addrlen) < 0 && errno != EINPROGRESS)) {
        st.connect_failures++;
        end_session(s, cfg.retry_ns);
    }
}

static void on_connected(struct sess *s)
{
    int err = 0;
    socklen_t el = sizeof err;
    if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0 || err) {
        st.connect_failures++;
        end_session(s, cfg.retry_ns);
        return;
    }
    uint8_t raw[16];
    uint64_t a = xorshift64(&rng), b = xorshift64(&rng);
    memcpy(raw, &a, 8);
    memcpy(raw + 8, &b, 8);
    char key[25];
    base64_encode(raw, sizeof raw, key);
    ws_accept_key(key, 24, s->accept);
    int n = snprintf(s->req, sizeof s->req,
                     "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %s\r\n%s\r\n",
                     cfg.path, cfg.hostport, key, cfg.extra ? cfg.extra : "");
    if (n <= 0 || (size_t)n >= sizeof s->req) {
        st.bad_handshakes++;
        end_session(s, cfg.retry_ns);
        return;
    }
    s->req_len = (size_t)n;
    s->state = S_HS;
    set_events(s, EPOLLIN | EPOLLOUT);
}

static void on_handshake(struct sess *s)
{
    const char *h = (const char *)s->in.data + s->in.start;
    size_t n = buf_used(&s->in);
    size_t from = s->hs_scan > 3 ? s->hs_scan - 3 : 0;
    const char *e = memmem(h + from, n - from, "\r\n\r\n", 4);
    if (!e) {
        s->hs_scan = n;
        if (n > HS_MAX) {
            st.bad_handshakes++;
            end_session(s, cfg.retry_ns);
        }
        return;
    }
    size_t hl = (size_t)(e + 4 - h);
    if (hl < 13 || memcmp(h, "HTTP/1.", 7) != 0 || h[9] < '1' || h[9] > '5') {
        st.bad_handshakes++;
        end_session(s, cfg.retry_ns);
        return;
    }
    int code = (h[9] - '0') * 100 + (h[10] - '0') * 10 + (h[11] - '0');
    const char *v;
    size_t vl;
    if (code != 101) {
        if (code >= 0 && code < 600)
            st.status[code]++;
        end_session(s, cfg.retry_ns); /* refused: retry after a pause, not in a spin */
        return;
    }
    if (!http_header(h, hl, "Sec-WebSocket-Accept", &v, &vl) || vl != 28 ||
        memcmp(v, s->accept, 28) != 0) {
        st.bad_handshakes++;
        end_session(s, cfg.retry_ns);
        return;
    }
    st.handshakes++;
    buf_consume(&s->in, hl);
    s->state = S_FIRST;
}

/* Server frames: the first must be a text message naming session.created;
 * after it everything is discarded, payloads without buffering, except close
 * frames (their code is counted and the session ends: reconnect at once). */
static void frames(struct sess *s)
{
    while (s->state >= S_FIRST) {
        size_t n = buf_used(&s->in);
        if (s->skip) {
            size_t k = s->skip < n ? (size_t)s->skip : n;
            s->skip -= k;
            buf_consume(&s->in, k);
            if (s->skip)
                return;
            continue;
        }
        uint8_t *p = s->in.data + s->in.start;
        struct ws_frame f;
        int r = ws_parse(p, n, &f);
        if (r == 0)
            return;
        if (r < 0 || f.masked) {
            st.protocol_errors++;
            end_session(s, 0);
            return;
        }
        int whole = f.opcode == WS_CLOSE || s->state == S_FIRST;
        if (whole && f.len > FIRST_MAX) {
            st.first_message_failures++;
            end_session(s, cfg.retry_ns);
            return;
        }
        if (whole && n - f.hdr < f.len)
            return;
        st.frames_in++;
        if (f.opcode == WS_CLOSE) {
            count_close(f.len >= 2 ? p[f.hdr] << 8 | p[f.hdr + 1] : 1005);
            end_session(s, 0);
            return;
        }
        if (s->state == S_FIRST) {
            static const char CREATED[] = "\"session.created\"";
            if (f.opcode != WS_TEXT || !memmem(p + f.hdr, (size_t)f.len, CREATED,
                                               sizeof CREATED - 1)) {
                st.first_message_failures++;
                end_session(s, cfg.retry_ns);
                return;
            }
            st.up++;
            s->state = S_UP;
            /* The attack starts: write whenever the socket takes more. */
            if (cfg.mode != M_READ)
                set_events(s, EPOLLIN | EPOLLOUT);
            buf_consume(&s->in, f.hdr + (size_t)f.len);
            continue;
        }
        /* Any other frame (pings included: a pong could not be put in the
         * middle of an attack frame) is read and dropped. */
        buf_consume(&s->in, f.hdr);
        s->skip = f.len;
    }
}

static void on_readable(struct sess *s)
{
    if (buf_reserve(&s->in, 4096) < 0) {
        st.protocol_errors++;
        end_session(s, 0);
        return;
    }
    ssize_t n = read(s->fd, s->in.data + s->in.len, s->in.cap - s->in.len);
    if (n <= 0) {
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        if (s->state == S_UP)
            st.eof++; /* EOF or reset without a close frame */
        else
            st.bad_handshakes++;
        end_session(s, s->state == S_UP ? 0 : cfg.retry_ns);
        return;
    }
    st.bytes_in += (uint64_t)n;
    s->in.len += (size_t)n;
    if (s->state == S_HS)
        on_handshake(s);
    if (s->state >= S_FIRST)
        frames(s);
}

/* Writes the request, or the attack stream (pieces of at most cfg.piece per
 * write, up to WAKE_BYTES per wake-up so every session gets its turn). */
static void on_writable(struct sess *s)
{
    if (s->state == S_HS) {
        while (s->req_off < s->req_len) {
            ssize_t w = write(s->fd, s->req + s->req_off, s->req_len - s->req_off);
            if (w < 0) {
                if (errno == EAGAIN || errno == EINTR)
                    return;
                st.bad_handshakes++;
                end_session(s, cfg.retry_ns);
                return;
            }
            st.bytes_out += (uint64_t)w;
            s->req_off += (size_t)w;
        }
        set_events(s, EPOLLIN);
        return;
    }
    if (s->state != S_UP || !stream_len) {
        set_events(s, EPOLLIN);
        return;
    }
    for (size_t done = 0; done < WAKE_BYTES;) {
        size_t at = (size_t)(s->pos % stream_len);
        size_t k = stream_len - at < cfg.piece ? stream_len - at : cfg.piece;
        ssize_t w = write(s->fd, stream + at, k);
        if (w < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return;
            if (errno != EPIPE && errno != ECONNRESET)
                st.protocol_errors++;
            else
                st.eof++;
            end_session(s, 0);
            return;
        }
        st.writes++;
        st.bytes_out += (uint64_t)w;
        s->pos += (uint64_t)w;
        done += (size_t)w;
        if (s->pos % stream_len == 0)
            st.streams_out++;
    }
}

static void on_io(long i, uint32_t e)
{
    struct sess *s = &S[i];
    if (s->state == S_WAIT)
        return;
    if (s->state == S_CONNECTING) {
        on_connected(s);
        return;
    }
    if (e & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        on_readable(s);
        if (s->state == S_WAIT)
            return;
    }
    if (e & EPOLLOUT)
        on_writable(s);
}

static void tick(void)
{
    uint64_t now = now_ns();
    if (cfg.duration_ns && now - t_start >= cfg.duration_ns)
        stopping = 1;
    for (long i = 0; i < cfg.sessions && !stopping; i++) {
        struct sess *s = &S[i];
        if (s->state == S_WAIT && now >= s->retry_at)
            open_session(s, now);
        else if (s->state != S_WAIT && s->state < S_UP && now >= s->deadline) {
            st.timeouts++;
            end_session(s, cfg.retry_ns);
        }
    }
}

/* ---- output ---- */

static double tv_s(struct timeval tv) { return (double)tv.tv_sec + (double)tv.tv_usec / 1e6; }

static int write_stats(void)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", cfg.out) >= (int)sizeof tmp)
        return -1;
    FILE *f = fopen(tmp, "w");
    if (!f)
        return -1;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    fprintf(f, "{\n  \"mode\": \"%s\",\n  \"sessions\": %ld,\n  \"size\": %zu,\n", MODE[cfg.mode],
            cfg.sessions, cfg.size);
    fprintf(f, "  \"stream_bytes\": %zu,\n  \"stream_messages\": %zu,\n", stream_len,
            stream_messages);
    fprintf(f,
            "  \"connects\": %lu,\n  \"connect_failures\": %lu,\n  \"handshakes\": %lu,\n"
            "  \"bad_handshakes\": %lu,\n  \"timeouts\": %lu,\n  \"up\": %lu,\n"
            "  \"first_message_failures\": %lu,\n  \"eof\": %lu,\n  \"protocol_errors\": %lu,\n",
            (unsigned long)st.connects, (unsigned long)st.connect_failures,
            (unsigned long)st.handshakes, (unsigned long)st.bad_handshakes,
            (unsigned long)st.timeouts, (unsigned long)st.up,
            (unsigned long)st.first_message_failures, (unsigned long)st.eof,
            (unsigned long)st.protocol_errors);
    fprintf(f, "  \"http_statuses\": {");
    for (int i = 0, first = 1; i < 600; i++)
        if (st.status[i]) {
            fprintf(f, "%s\"%d\": %lu", first ? "" : ", ", i, (unsigned long)st.status[i]);
            first = 0;
        }
    fprintf(f, "},\n  \"close_codes\": {");
    for (int i = 0; i < MAX_CODES && st.codes[i]; i++)
        fprintf(f, "%s\"%d\": %lu", i ? ", " : "", st.codes[i], (unsigned long)st.code_n[i]);
    fprintf(f, "},\n  \"close_codes_other\": %lu,\n", (unsigned long)st.code_other);
    fprintf(f,
            "  \"bytes_out\": %lu,\n  \"bytes_in\": %lu,\n  \"writes\": %lu,\n"
            "  \"messages_out\": %lu,\n  \"frames_in\": %lu,\n  \"duration_s\": %.3f,\n"
            "  \"cpu_user_s\": %.3f,\n  \"cpu_sys_s\": %.3f\n}\n",
            (unsigned long)st.bytes_out, (unsigned long)st.bytes_in, (unsigned long)st.writes,
            (unsigned long)(stream_len ? st.streams_out * stream_messages : 0),
            (unsigned long)st.frames_in, (double)(now_ns() - t_start) / 1e9, tv_s(ru.ru_utime),
            tv_s(ru.ru_stime));
    if (fclose(f) != 0 || rename(tmp, cfg.out) != 0) {
        unlink(tmp);
        return -1;
    }
    return 0;
}

/* ---- self test ---- */

static int check(int ok, const char *what)
{
    if (!ok)
        fprintf(stderr, "selftest FAILED: %s\n", what);
    return !ok;
}

/* Parses a stream back: its frames, unmasked; the messages reassembled must
 * be what the mode promises. */
static int check_stream(int mode, size_t size, size_t fragment)
{
    int fails = 0;
    if (build_stream(mode, size, fragment) < 0)
        return check(0, "stream allocation");
    uint8_t *copy = malloc(stream_len + 1);
    uint8_t *msg = malloc(stream_len + 1);
    if (!copy || !msg) {
        free(copy);
        free(msg);
        return check(0, "selftest allocation");
    }
    memcpy(copy, stream, stream_len);
    size_t off = 0, ml = 0, messages = 0, frames = 0;
    int in_message = 0;
    while (off < stream_len) {
        struct ws_frame f;
        if (ws_parse(copy + off, stream_len - off, &f) != 1 || !f.masked ||
            off + f.hdr + f.len > stream_len) {
            fails += check(0, "stream frame parses");
            break;
        }
        uint8_t *pl = copy + off + f.hdr;
        ws_mask(pl, (size_t)f.len, f.mask);
        frames++;
        if (mode == M_PING) {
            fails += check(f.opcode == WS_PING && f.fin && f.len == 0, "empty ping");
            messages++;
        } else if (mode == M_TINY) {
            fails += check(f.opcode == WS_TEXT && f.fin && f.len == 2 && memcmp(pl, "{}", 2) == 0,
                           "tiny frame");
            messages++;
        } else {
            fails += check(f.opcode == (in_message ? WS_CONT : WS_TEXT), "fragment opcodes");
            if (mode == M_FRAGMENTS)
                fails += check(f.fin ? f.len <= fragment : f.len == fragment, "fragment size");
            memcpy(msg + ml, pl, (size_t)f.len);
            ml += (size_t)f.len;
            in_message = !f.fin;
            if (f.fin)
                messages++;
        }
        off += f.hdr + (size_t)f.len;
    }
    fails += check(messages == stream_messages, "messages counted");
    if (mode == M_PING || mode == M_TINY) {
        fails += check(stream_len <= BLOCK && stream_len > BLOCK - 8, "block filled");
    } else {
        msg[ml] = 0;
        fails += check(ml <= size && ml > size - 16, "message fills the size");
        fails += check(mode != M_FRAGMENTS || frames == (ml + fragment - 1) / fragment,
                       "fragment count");
        fails += check(msg[0] == '{' && msg[ml - 1] == '}', "a JSON object");
        size_t colons = 0, commas = 0;
        for (size_t i = 0; i < ml; i++) {
            colons += msg[i] == ':';
            commas += msg[i] == ',';
        }
        if (mode == M_LARGE || mode == M_FRAGMENTS)
            fails += check(memmem(msg, ml, "\"input_audio_buffer.append\"", 27) &&
                               colons == 2 && (ml - 47) % 4 == 0,
                           "append document");
        else if (mode == M_JSON_KEYS)
            fails += check(colons == commas + 1 && colons == 1 + (size - 26) / 12 &&
                               memmem(msg, ml, ",\"0000001\":0,", 13),
                           "keys document");
        else
            fails += check(colons == 2 && commas == 1 + (size - 34) / 2, "array document");
    }
    free(copy);
    free(msg);
    return fails;
}

static int selftest(void)
{
    int fails = ws_selftest();
    rng = 0x9E3779B97F4A7C15ULL;
    for (int mode = 0; mode < M_READ; mode++) {
        fails += check_stream(mode, 10000, 1024);
        fails += check_stream(mode, 100003, 1000);
    }
    fails += check_stream(M_FRAGMENTS, 4096, 1024); /* an exact multiple */
    free(stream);
    stream = NULL;
    if (!fails)
        fprintf(stderr, "attack selftest ok\n");
    return fails;
}

/* ---- command line ---- */

static void usage(FILE *to)
{
    fprintf(to,
            "usage: attack --url ws://HOST:PORT/PATH?QUERY [--header 'Name: value']...\n"
            "              --mode ping|tiny|large|fragments|json-keys|json-array|read\n"
            "              --sessions N [--size BYTES] [--piece BYTES] [--fragment BYTES]\n"
            "              [--duration S] [--retry-ms 100] [--connect-timeout S] --out stats.json\n"
            "       attack --selftest\n");
}

static int parse_double(const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi))
        return -1;
    *out = v;
    return 0;
}

static int parse_url(const char *url)
{
    if (strncmp(url, "ws://", 5) != 0)
        return -1;
    const char *p = url + 5, *slash = strchr(p, '/'), *q = strchr(p, '?');
    if (!slash || (q && q < slash))
        slash = q;
    size_t hl = slash ? (size_t)(slash - p) : strlen(p);
    if (hl == 0 || hl >= sizeof cfg.hostport)
        return -1;
    memcpy(cfg.hostport, p, hl);
    cfg.hostport[hl] = '\0';
    const char *path = slash ? slash : "/";
    if (strlen(path) + 2 >= sizeof cfg.path)
        return -1;
    snprintf(cfg.path, sizeof cfg.path, "%s%s", path[0] == '?' ? "/" : "", path);
    for (const char *c = cfg.path; *c; c++)
        if (*c == ' ' || *c == '\r' || *c == '\n' || *c == '#')
            return -1;
    const char *colon = strrchr(cfg.hostport, ':');
    size_t host_len = colon ? (size_t)(colon - cfg.hostport) : hl;
    if (host_len == 0 || host_len >= sizeof cfg.host || cfg.hostport[0] == '[')
        return -1; /* IPv4 and names only: the bench runs on 127.0.0.1 */
    memcpy(cfg.host, cfg.hostport, host_len);
    cfg.host[host_len] = '\0';
    snprintf(cfg.port, sizeof cfg.port, "%.15s", colon ? colon + 1 : "80");
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai;
    if (getaddrinfo(cfg.host, cfg.port, &hints, &ai) != 0)
        return -1;
    memcpy(&cfg.addr, ai->ai_addr, ai->ai_addrlen);
    cfg.addrlen = ai->ai_addrlen;
    freeaddrinfo(ai);
    return 0;
}

static int add_header(size_t *len, const char *h)
{
    const char *colon = strchr(h, ':');
    size_t hl = strlen(h);
    if (!colon || colon == h || strpbrk(h, "\r\n") || *len + hl + 2 > 1000)
        return -1;
    char *e = realloc(cfg.extra, *len + hl + 3);
    if (!e)
        return -1;
    cfg.extra = e;
    memcpy(e + *len, h, hl);
    memcpy(e + *len + hl, "\r\n", 3);
    *len += hl + 2;
    return 0;
}

int main(int argc, char **argv)
{
    double sessions = -1, size = 16 << 20, piece = -1, fragment = 1024, duration = 0,
           retry_ms = 100, connect_timeout = 10;
    const char *url = NULL, *mode = NULL;
    size_t extra_len = 0;
    static const struct option opts[] = {
        {"url", required_argument, NULL, 'u'},
        {"header", required_argument, NULL, 'H'},
        {"mode", required_argument, NULL, 'm'},
        {"sessions", required_argument, NULL, 'n'},
        {"size", required_argument, NULL, 's'},
        {"piece", required_argument, NULL, 'p'},
        {"fragment", required_argument, NULL, 'f'},
        {"duration", required_argument, NULL, 'd'},
        {"retry-ms", required_argument, NULL, 'r'},
        {"connect-timeout", required_argument, NULL, 'C'},
        {"out", required_argument, NULL, 'o'},
        {"selftest", no_argument, NULL, 'T'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    int o, bad = 0;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'u': url = optarg; break;
        case 'H': bad |= add_header(&extra_len, optarg) < 0; break;
        case 'm': mode = optarg; break;
        case 'n': bad |= parse_double(optarg, 1, 100000, &sessions) < 0; break;
        case 's': bad |= parse_double(optarg, 256, 256 << 20, &size) < 0; break;
        case 'p': bad |= parse_double(optarg, 1, 1 << 24, &piece) < 0; break;
        case 'f': bad |= parse_double(optarg, 1, 1 << 24, &fragment) < 0; break;
        case 'd': bad |= parse_double(optarg, 0, 86400, &duration) < 0; break;
        case 'r': bad |= parse_double(optarg, 0, 60000, &retry_ms) < 0; break;
        case 'C': bad |= parse_double(optarg, 0.001, 3600, &connect_timeout) < 0; break;
        case 'o': cfg.out = optarg; break;
        case 'T': free(cfg.extra); return selftest() ? 1 : 0;
        case 'h': usage(stdout); free(cfg.extra); return 0;
        default: bad = 1;
        }
    }
    cfg.mode = -1;
    for (int m = 0; mode && m < M_N; m++)
        if (strcmp(mode, MODE[m]) == 0)
            cfg.mode = m;
    if (bad || !url || cfg.mode < 0 || sessions < 1 || sessions != floor(sessions) || !cfg.out ||
        optind != argc || parse_url(url) < 0) {
        usage(stderr);
        free(cfg.extra);
        return 2;
    }
    cfg.sessions = (long)sessions;
    cfg.size = (size_t)size;
    cfg.fragment = (size_t)fragment;
    /* Large frames go in 4 KiB pieces; every other stream as the socket takes it. */
    cfg.piece = piece > 0 ? (size_t)piece : cfg.mode == M_LARGE ? 4096 : 65536;
    cfg.duration_ns = (uint64_t)llround(duration * 1e9);
    cfg.retry_ns = (uint64_t)llround(retry_ms * 1e6);
    cfg.connect_timeout_ns = (uint64_t)llround(connect_timeout * 1e9);

    signal(SIGPIPE, SIG_IGN);
    long nofile = raise_nofile();
    if (nofile > 0 && cfg.sessions + 32 > nofile) {
        fprintf(stderr, "attack: %ld sessions need more file descriptors\n", cfg.sessions);
        free(cfg.extra);
        return 2;
    }
    rng = random_seed();
    S = calloc((size_t)cfg.sessions, sizeof *S);
    if (!S || build_stream(cfg.mode, cfg.size, cfg.fragment) < 0) {
        fprintf(stderr, "attack: out of memory\n");
        return 1;
    }
    for (long i = 0; i < cfg.sessions; i++)
        S[i].fd = -1;

    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    int sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    ep = epoll_create1(EPOLL_CLOEXEC);
    struct itimerspec its = {.it_interval = {.tv_sec = 0, .tv_nsec = (long)TICK_NS},
                             .it_value = {.tv_sec = 0, .tv_nsec = 1}};
    struct epoll_event tev = {.events = EPOLLIN, .data.u64 = TAG_TIMER};
    struct epoll_event sev = {.events = EPOLLIN, .data.u64 = TAG_SIGNAL};
    if (sfd < 0 || tfd < 0 || ep < 0 || timerfd_settime(tfd, 0, &its, NULL) < 0 ||
        epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &tev) < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &sev) < 0) {
        perror("attack: setup");
        return 1;
    }
    t_start = now_ns();
    int status = 0;
    struct epoll_event evs[MAX_EVENTS];
    while (!stopping) {
        int n = epoll_wait(ep, evs, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            perror("attack: epoll_wait");
            status = 1;
            break;
        }
        for (int k = 0; k < n && !stopping; k++) {
            uint64_t tag = evs[k].data.u64;
            if (tag == TAG_TIMER) {
                uint64_t expirations;
                if (read(tfd, &expirations, sizeof expirations) > 0)
                    tick();
            } else if (tag == TAG_SIGNAL) {
                stopping = 1;
            } else {
                on_io((long)tag, evs[k].events);
            }
        }
    }
    /* The attack ends the moment the sockets close (no close handshake). */
    for (long i = 0; i < cfg.sessions; i++)
        if (S[i].fd >= 0)
            end_session(&S[i], 0);
    if (write_stats() < 0) {
        perror("attack: --out");
        status = 1;
    }
    fprintf(stderr, "attack: %s x%ld: %lu connects, %lu up, %lu bytes out\n", MODE[cfg.mode],
            cfg.sessions, (unsigned long)st.connects, (unsigned long)st.up,
            (unsigned long)st.bytes_out);
    close(ep);
    close(tfd);
    close(sfd);
    free(S);
    free(stream);
    free(cfg.extra);
    return status;
}
