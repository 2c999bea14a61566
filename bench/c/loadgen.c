/* loadgen: opens N WebSocket sessions and sends one input_audio_buffer.append
 * per session every interval, phase-staggered; measures the round trip to each
 * response.audio.delta. Single-threaded epoll + timerfd. See README.md. */
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

#define MAX_FRAME ((size_t)1 << 20)
#define MAX_CHUNK ((size_t)700000) /* keeps an append under MAX_FRAME */
#define IN_INIT ((size_t)16384)
#define IN_MAX (MAX_FRAME + 65536)
#define OUT_INIT ((size_t)16384)
#define OUT_MAX ((size_t)8 << 20)
#define HS_MAX ((size_t)16384)
#define READ_MIN ((size_t)4096)
#define RING 512 /* sends remembered per session, a power of two */
#define MAX_EVENTS 512
#define TAG_TIMER UINT64_MAX
#define TAG_SIGNAL (UINT64_MAX - 1)
#define NS 1000000000ULL
#define DRAIN_NS (2 * NS)
#define CLOSE_NS (1 * NS)

enum { S_IDLE, S_CONNECTING, S_HS, S_WAIT_FIRST, S_UP, S_CLOSING, S_DONE };
enum { F_CONNECT, F_STATUS, F_HANDSHAKE, F_PROTOCOL, F_CLOSED, F_FIRST, F_TIMEOUT, F_N };
static const char *const FREASON[F_N] = {"connect",  "http_status", "bad_handshake",
                                         "protocol", "closed_early", "first_message",
                                         "timeout"};
enum { P_CONNECT, P_RUN, P_DRAIN, P_CLOSE, P_DONE };

struct slot {
    uint64_t t_ns;
    uint32_t seq;
    uint32_t st;    /* 0 free/answered, 1 pending (measured), 2 pending (warmup) */
    uint32_t trace; /* index of its --trace record, or NO_TRACE */
};

#define NO_TRACE UINT32_MAX

/* --trace: one record per measured send, its round trip filled in on answer. */
struct trace_rec {
    uint64_t send_ns;
    int64_t rtt_us; /* -1: never answered */
    uint32_t sess;
};

struct sess {
    int fd, state;
    uint32_t events, seq;
    size_t hs_scan;
    struct buf in, out;
    char accept[29];
    struct slot ring[RING];
};

/* ---- configuration ---- */
static struct {
    char host[256], hostport[300], port[16], path[2048];
    char *extra; /* "Name: value\r\n"... */
    int offers_protocol;
    long sessions, chunk;
    uint64_t interval_ns, duration_ns, warmup_ns, connect_timeout_ns, tick_ns;
    double rate;
    const char *out, *trace;
    struct sockaddr_storage addr;
    socklen_t addrlen;
} cfg;

/* ---- state ---- */
static struct sess *S;
static int ep = -1;
static int phase = P_CONNECT;
static uint64_t rng;
static uint8_t *scratch;  /* one outgoing frame */
static char *req;         /* request head without the key line */
static size_t req_len;
static char *append_tail; /* ","audio":"<base64>"} */
static size_t tail_len, append_plen_base;

static long opened, resolved, connected_n, closing_n;
static long *up;
static long up_n, sched_j;
static uint64_t sched_k, t0, connect_deadline, run_start, measure_start, send_end, drain_deadline,
    close_deadline, connect_done;
static struct rusage ru_run0, ru_run1;
static int ru_run1_set;
static struct trace_rec *trace;
static size_t trace_n, trace_cap;

static struct {
    uint64_t sent, answered, abandoned, sent_total, received_total, unmatched, other_events,
        late_sends, late_sends_total, max_lag_ns, protocol_errors, unsupported_frames,
        overflows, io_errors, dropped, server_closes, close_timeouts, frames_in, frames_out,
        bytes_in, bytes_out, frames_run;
    uint64_t fail[F_N];
    uint64_t status[600];
} st;

/* ---- RTT histogram: 1 us buckets below 10 ms, then 10/100/1000 us ---- */
#define H1 10000u
#define H2 9000u
#define H3 9000u
#define H4 9000u
#define HN (H1 + H2 + H3 + H4 + 1u)
static uint64_t hist[HN], h_count, h_max;
static double h_sum;

static void hist_add(uint64_t us)
{
    uint32_t b;
    if (us < 10000)
        b = (uint32_t)us;
    else if (us < 100000)
        b = H1 + (uint32_t)((us - 10000) / 10);
    else if (us < 1000000)
        b = H1 + H2 + (uint32_t)((us - 100000) / 100);
    else if (us < 10000000)
        b = H1 + H2 + H3 + (uint32_t)((us - 1000000) / 1000);
    else
        b = HN - 1;
    hist[b]++;
    h_count++;
    h_sum += (double)us;
    if (us > h_max)
        h_max = us;
}

static uint64_t hist_lower(uint32_t b)
{
    if (b < H1)
        return b;
    if (b < H1 + H2)
        return 10000 + (uint64_t)(b - H1) * 10;
    if (b < H1 + H2 + H3)
        return 100000 + (uint64_t)(b - H1 - H2) * 100;
    if (b < HN - 1)
        return 1000000 + (uint64_t)(b - H1 - H2 - H3) * 1000;
    return h_max;
}

static uint64_t hist_pct(double p) /* nearest rank */
{
    uint64_t rank = (uint64_t)ceil(p * (double)h_count);
    if (rank < 1)
        rank = 1;
    uint64_t acc = 0;
    for (uint32_t b = 0; b < HN; b++) {
        acc += hist[b];
        if (acc >= rank) {
            uint64_t v = hist_lower(b);
            return v > h_max ? h_max : v;
        }
    }
    return h_max;
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

static void sess_close_fd(struct sess *s)
{
    if (s->state == S_CLOSING)
        closing_n--;
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
    s->state = S_DONE;
    buf_free(&s->in);
    buf_free(&s->out);
}

/* The session ends: before it was up, a connect failure with `reason`; while
 * up, an error (dropped); while closing, the normal end. */
static void end_session(struct sess *s, int reason)
{
    if (s->state == S_DONE || s->state == S_IDLE)
        return;
    if (s->state < S_UP) {
        st.fail[reason]++;
        resolved++;
    } else if (s->state == S_UP) {
        st.dropped++; /* its cause is counted where it is detected */
        for (int i = 0; i < RING; i++)
            if (s->ring[i].st == 1) {
                s->ring[i].st = 0;
                st.abandoned++;
            }
    }
    sess_close_fd(s);
}

static void protocol_error(struct sess *s)
{
    if (s->state == S_UP)
        st.protocol_errors++;
    end_session(s, F_PROTOCOL);
}

/* Writes or queues n bytes; -1 if the session ended. */
static int out_send(struct sess *s, const uint8_t *p, size_t n)
{
    if (buf_used(&s->out) == 0) {
        ssize_t w = write(s->fd, p, n);
        if (w == (ssize_t)n) {
            st.bytes_out += n;
            return 0;
        }
        if (w < 0) {
            if (errno != EAGAIN && errno != EINTR) {
                if (s->state >= S_UP && s->state != S_CLOSING)
                    st.io_errors++;
                end_session(s, F_CLOSED);
                return -1;
            }
            w = 0;
        }
        st.bytes_out += (uint64_t)w;
        p += w;
        n -= (size_t)w;
    }
    if (buf_reserve(&s->out, n) < 0) {
        if (s->state == S_UP)
            st.overflows++;
        end_session(s, F_PROTOCOL);
        return -1;
    }
    memcpy(s->out.data + s->out.len, p, n);
    s->out.len += n;
    set_events(s, EPOLLIN | EPOLLOUT);
    return 0;
}

static void flush(struct sess *s)
{
    size_t pending = buf_used(&s->out);
    if (pending) {
        ssize_t w = write(s->fd, s->out.data + s->out.start, pending);
        if (w < 0) {
            if (errno != EAGAIN && errno != EINTR) {
                if (s->state == S_UP)
                    st.io_errors++;
                end_session(s, F_CLOSED);
                return;
            }
            w = 0;
        }
        st.bytes_out += (uint64_t)w;
        buf_consume(&s->out, (size_t)w);
        pending -= (size_t)w;
    }
    set_events(s, pending ? EPOLLIN | EPOLLOUT : EPOLLIN);
}

static uint8_t *mask_key(uint8_t m[4])
{
    uint64_t r = xorshift64(&rng);
    memcpy(m, &r, 4);
    return m;
}

static int send_control(struct sess *s, unsigned opcode, const uint8_t *pl, size_t len)
{
    uint8_t f[14 + 125], m[4];
    size_t h = ws_header(f, opcode, len, mask_key(m));
    if (len)
        memcpy(f + h, pl, len);
    ws_mask(f + h, len, m);
    st.frames_out++;
    return out_send(s, f, h + len);
}

static void open_session(long i)
{
    struct sess *s = &S[i];
    int fd = socket(cfg.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        st.fail[F_CONNECT]++;
        resolved++;
        s->state = S_DONE;
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    s->fd = fd;
    s->state = S_CONNECTING;
    buf_init(&s->out, OUT_INIT, OUT_MAX, 0);
    struct epoll_event ev = {.events = EPOLLOUT, .data.u64 = (uint64_t)i};
    s->events = EPOLLOUT;
    if (buf_init(&s->in, IN_INIT, IN_MAX, 1) < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0 ||
        (connect(fd, (struct sockaddr *)&cfg.addr, cfg.addrlen) < 0 && errno != EINPROGRESS))
        end_session(s, F_CONNECT);
}

static void on_connected(struct sess *s)
{
    int err = 0;
    socklen_t el = sizeof err;
    if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0 || err) {
        end_session(s, F_CONNECT);
        return;
    }
    uint8_t raw[16];
    uint64_t a = xorshift64(&rng), b = xorshift64(&rng);
    memcpy(raw, &a, 8);
    memcpy(raw + 8, &b, 8);
    char key[25];
    base64_encode(raw, sizeof raw, key);
    ws_accept_key(key, 24, s->accept);
    memcpy(scratch, req, req_len);
    size_t n = req_len;
    memcpy(scratch + n, "Sec-WebSocket-Key: ", 19);
    n += 19;
    memcpy(scratch + n, key, 24);
    n += 24;
    memcpy(scratch + n, "\r\n\r\n", 4);
    n += 4;
    s->state = S_HS;
    set_events(s, EPOLLIN);
    out_send(s, scratch, n);
}

static int header_is(const char *h, size_t n, const char *name, const char *want, int contains)
{
    const char *v;
    size_t vl;
    if (!http_header(h, n, name, &v, &vl))
        return 0;
    if (contains)
        return ci_contains(v, vl, want);
    return vl == strlen(want) && ci_contains(v, vl, want);
}

static void on_handshake(struct sess *s)
{
    const char *h = (const char *)s->in.data + s->in.start;
    size_t n = buf_used(&s->in);
    size_t from = s->hs_scan > 3 ? s->hs_scan - 3 : 0;
    const char *e = memmem(h + from, n - from, "\r\n\r\n", 4);
    if (!e) {
        s->hs_scan = n;
        if (n > HS_MAX)
            end_session(s, F_HANDSHAKE);
        return;
    }
    size_t hl = (size_t)(e + 4 - h);
    if (hl < 13 || memcmp(h, "HTTP/1.", 7) != 0 || h[8] != ' ' || h[9] < '1' || h[9] > '5' ||
        h[10] < '0' || h[10] > '9' || h[11] < '0' || h[11] > '9') {
        end_session(s, F_HANDSHAKE);
        return;
    }
    int code = (h[9] - '0') * 100 + (h[10] - '0') * 10 + (h[11] - '0');
    if (code != 101) {
        st.status[code]++;
        end_session(s, F_STATUS);
        return;
    }
    const char *v;
    size_t vl;
    int ok = header_is(h, hl, "Upgrade", "websocket", 0) &&
             header_is(h, hl, "Connection", "upgrade", 1) &&
             http_header(h, hl, "Sec-WebSocket-Accept", &v, &vl) && vl == 28 &&
             memcmp(v, s->accept, 28) == 0;
    /* No extension was offered: a server selecting one fails the connection. */
    if (ok && http_header(h, hl, "Sec-WebSocket-Extensions", &v, &vl) && vl)
        ok = 0;
    if (ok && !cfg.offers_protocol && http_header(h, hl, "Sec-WebSocket-Protocol", &v, &vl) && vl)
        ok = 0;
    if (!ok) {
        end_session(s, F_HANDSHAKE);
        return;
    }
    buf_consume(&s->in, hl);
    s->state = S_WAIT_FIRST;
}

static int parse_u64(const uint8_t **p, const uint8_t *end, uint64_t *out)
{
    const uint8_t *q = *p;
    uint64_t v = 0;
    if (q >= end || *q < '0' || *q > '9')
        return 0;
    for (; q < end && *q >= '0' && *q <= '9'; q++)
        v = v * 10 + (uint64_t)(*q - '0');
    *p = q;
    *out = v;
    return 1;
}

static void on_delta(struct sess *s, const uint8_t *pl, size_t len, uint64_t now)
{
    const uint8_t *v, *end;
    size_t vl;
    uint64_t idx, seq;
    st.received_total++;
    if (!json_str(pl, len, "\"response_id\"", &v, &vl)) {
        st.unmatched++;
        return;
    }
    end = v + vl;
    if (!parse_u64(&v, end, &idx) || v >= end || *v++ != '-' || !parse_u64(&v, end, &seq) ||
        v != end || idx != (uint64_t)(s - S) || seq > UINT32_MAX) {
        st.unmatched++;
        return;
    }
    struct slot *sl = &s->ring[seq & (RING - 1)];
    if (sl->st == 0 || sl->seq != (uint32_t)seq) {
        st.unmatched++; /* duplicate, or older than the ring remembers */
        return;
    }
    if (sl->st == 1) {
        uint64_t us = (now - sl->t_ns + 500) / 1000;
        st.answered++;
        hist_add(us);
        if (sl->trace != NO_TRACE)
            trace[sl->trace].rtt_us = (int64_t)us;
    }
    sl->st = 0;
}

static void on_text(struct sess *s, const uint8_t *pl, size_t len, uint64_t now)
{
    static const char DELTA[] = "\"response.audio.delta\"";
    static const char CREATED[] = "\"session.created\"";
    if (s->state == S_WAIT_FIRST) {
        if (memmem(pl, len, CREATED, sizeof CREATED - 1)) {
            s->state = S_UP;
            connected_n++;
            resolved++;
        } else {
            end_session(s, F_FIRST);
        }
        return;
    }
    if (memmem(pl, len, DELTA, sizeof DELTA - 1))
        on_delta(s, pl, len, now);
    else
        st.other_events++;
}

static void frames(struct sess *s, uint64_t now)
{
    while (s->state >= S_WAIT_FIRST && s->state <= S_CLOSING) {
        uint8_t *p = s->in.data + s->in.start;
        size_t n = buf_used(&s->in);
        struct ws_frame f;
        int r = ws_parse(p, n, &f);
        if (r == 0)
            return;
        if (r < 0 || f.masked) { /* server frames are never masked */
            protocol_error(s);
            return;
        }
        if (f.len > MAX_FRAME) {
            if (s->state == S_UP)
                st.overflows++;
            end_session(s, F_PROTOCOL);
            return;
        }
        if (n - f.hdr < f.len)
            return;
        uint8_t *pl = p + f.hdr;
        size_t len = (size_t)f.len;
        st.frames_in++;
        switch (f.opcode) {
        case WS_TEXT:
            if (f.fin)
                on_text(s, pl, len, now);
            else
                st.unsupported_frames++;
            break;
        case WS_BIN:
            if (f.fin)
                st.other_events++;
            else
                st.unsupported_frames++;
            break;
        case WS_CONT:
            st.unsupported_frames++;
            break;
        case WS_PING:
            if (send_control(s, WS_PONG, pl, len) < 0)
                return;
            break;
        case WS_PONG:
            break;
        case WS_CLOSE:
            if (s->state != S_CLOSING) {
                if (s->state == S_UP)
                    st.server_closes++;
                send_control(s, WS_CLOSE, pl, len >= 2 ? 2 : 0);
            }
            end_session(s, F_CLOSED);
            return;
        }
        if (s->state == S_DONE)
            return;
        buf_consume(&s->in, f.hdr + len);
    }
}

static void on_readable(struct sess *s)
{
    if (buf_reserve(&s->in, READ_MIN) < 0) {
        if (s->state == S_UP)
            st.overflows++;
        end_session(s, F_PROTOCOL);
        return;
    }
    ssize_t n = read(s->fd, s->in.data + s->in.len, s->in.cap - s->in.len);
    if (n <= 0) {
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        if (s->state == S_UP)
            st.io_errors++; /* EOF or reset without a close frame */
        end_session(s, F_CLOSED);
        return;
    }
    uint64_t now = now_ns();
    st.bytes_in += (uint64_t)n;
    s->in.len += (size_t)n;
    if (s->state == S_HS)
        on_handshake(s);
    if (s->state >= S_WAIT_FIRST && s->state <= S_CLOSING)
        frames(s, now);
}

static void on_io(long i, uint32_t e)
{
    struct sess *s = &S[i];
    if (s->state == S_DONE || s->state == S_IDLE)
        return;
    if (s->state == S_CONNECTING) {
        on_connected(s);
        return;
    }
    if (e & EPOLLOUT) {
        flush(s);
        if (s->state == S_DONE)
            return;
    }
    if (e & (EPOLLIN | EPOLLHUP | EPOLLERR))
        on_readable(s);
}

/* ---- schedule ---- */

static void send_append(long i, uint64_t t_sched, int measured)
{
    struct sess *s = &S[i];
    uint32_t seq = s->seq++;
    char id[48];
    size_t idl = utoa((uint64_t)i, id);
    id[idl++] = '-';
    idl += utoa(seq, id + idl);
    size_t plen = append_plen_base + idl;
    uint8_t m[4];
    size_t h = ws_header(scratch, WS_TEXT, plen, mask_key(m));
    uint8_t *p = scratch + h;
    static const char P1[] = "{\"type\":\"input_audio_buffer.append\",\"event_id\":\"";
    memcpy(p, P1, sizeof P1 - 1);
    memcpy(p + sizeof P1 - 1, id, idl);
    memcpy(p + sizeof P1 - 1 + idl, append_tail, tail_len);
    ws_mask(p, plen, m);
    struct slot *sl = &s->ring[seq & (RING - 1)];
    if (sl->st == 1)
        st.abandoned++; /* never answered within RING sends: lost */
    uint64_t now = now_ns();
    sl->seq = seq;
    sl->t_ns = now;
    sl->st = measured ? 1 : 2;
    sl->trace = NO_TRACE;
    if (measured && trace_n < trace_cap) {
        trace[trace_n] = (struct trace_rec){.send_ns = now, .rtt_us = -1, .sess = (uint32_t)i};
        sl->trace = (uint32_t)trace_n++;
    }
    uint64_t lag = now > t_sched ? now - t_sched : 0;
    if (lag > cfg.interval_ns) {
        st.late_sends_total++;
        if (measured)
            st.late_sends++;
    }
    if (measured) {
        st.sent++;
        if (lag > st.max_lag_ns)
            st.max_lag_ns = lag;
    }
    st.sent_total++;
    st.frames_out++;
    out_send(s, scratch, h + plen);
}

static void begin_run(uint64_t now)
{
    for (long i = 0; i < cfg.sessions; i++) {
        struct sess *s = &S[i];
        if (s->state == S_IDLE) {
            st.fail[F_TIMEOUT]++;
            resolved++;
            s->state = S_DONE;
        } else if (s->state < S_UP) {
            end_session(s, F_TIMEOUT);
        } else if (s->state == S_UP) {
            up[up_n++] = i;
        }
    }
    connect_done = now;
    run_start = now;
    measure_start = run_start + cfg.warmup_ns;
    send_end = measure_start + cfg.duration_ns;
    sched_k = 0;
    sched_j = 0;
    getrusage(RUSAGE_SELF, &ru_run0);
    st.frames_run = st.frames_in + st.frames_out;
    phase = up_n ? P_RUN : P_CLOSE;
    close_deadline = now;
}

static void begin_close(uint64_t now)
{
    getrusage(RUSAGE_SELF, &ru_run1);
    ru_run1_set = 1;
    st.frames_run = st.frames_in + st.frames_out - st.frames_run;
    static const uint8_t bye[2] = {1000 >> 8, 1000 & 255};
    for (long j = 0; j < up_n; j++) {
        struct sess *s = &S[up[j]];
        if (s->state != S_UP)
            continue;
        s->state = S_CLOSING;
        closing_n++;
        send_control(s, WS_CLOSE, bye, 2);
    }
    close_deadline = now + CLOSE_NS;
    phase = P_CLOSE;
}

static void tick(void)
{
    uint64_t now = now_ns();
    if (phase == P_CONNECT) {
        double allowed = 1.0 + (double)(now - t0) * cfg.rate / 1e9;
        while (opened < cfg.sessions && (double)opened < allowed)
            open_session(opened++);
        if (resolved >= cfg.sessions || now >= connect_deadline)
            begin_run(now);
    }
    if (phase == P_RUN) {
        for (;;) {
            uint64_t t = run_start + sched_k * cfg.interval_ns +
                         (uint64_t)sched_j * cfg.interval_ns / (uint64_t)up_n;
            if (t >= send_end) {
                phase = P_DRAIN;
                drain_deadline = now + DRAIN_NS;
                break;
            }
            if (t > now)
                break;
            long i = up[sched_j];
            if (S[i].state == S_UP)
                send_append(i, t, t >= measure_start);
            if (++sched_j == up_n) {
                sched_j = 0;
                sched_k++;
            }
        }
    }
    if (phase == P_DRAIN && (st.answered + st.abandoned >= st.sent || now >= drain_deadline))
        begin_close(now);
    if (phase == P_CLOSE && (closing_n == 0 || now >= close_deadline)) {
        for (long j = 0; j < up_n; j++) {
            struct sess *s = &S[up[j]];
            if (s->state == S_CLOSING) {
                st.close_timeouts++;
                sess_close_fd(s);
            }
        }
        phase = P_DONE;
    }
}

static void on_stop_signal(void)
{
    uint64_t now = now_ns();
    if (phase == P_CONNECT) {
        connect_deadline = now;
    } else if (phase == P_RUN) {
        send_end = now > measure_start ? now : measure_start;
    } else if (phase == P_DRAIN) {
        drain_deadline = now;
    } else if (phase == P_CLOSE) {
        close_deadline = now;
    }
}

/* ---- output ---- */

static double tv_s(struct timeval tv) { return (double)tv.tv_sec + (double)tv.tv_usec / 1e6; }

static int write_results(void)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", cfg.out) >= (int)sizeof tmp)
        return -1;
    FILE *f = fopen(tmp, "w");
    if (!f)
        return -1;
    uint64_t failures = 0;
    for (int i = 0; i < F_N; i++)
        failures += st.fail[i];
    uint64_t dur_ns = send_end > measure_start ? send_end - measure_start : 0;
    double dur = up_n ? (double)dur_ns / 1e9 : 0.0;
    uint64_t lost = st.sent - st.answered;
    uint64_t errors = st.protocol_errors + st.unsupported_frames + st.overflows +
                      st.io_errors + st.server_closes;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double run_cpu = 0;
    if (ru_run1_set)
        run_cpu = tv_s(ru_run1.ru_utime) + tv_s(ru_run1.ru_stime) - tv_s(ru_run0.ru_utime) -
                  tv_s(ru_run0.ru_stime);

    fprintf(f, "{\n  \"sessions_requested\": %ld,\n  \"sessions_connected\": %ld,\n",
            cfg.sessions, connected_n);
    fprintf(f, "  \"connect_failures\": %lu,\n  \"connect_failure_reasons\": {",
            (unsigned long)failures);
    for (int i = 0, first = 1; i < F_N; i++)
        if (st.fail[i]) {
            fprintf(f, "%s\"%s\": %lu", first ? "" : ", ", FREASON[i], (unsigned long)st.fail[i]);
            first = 0;
        }
    fprintf(f, "},\n  \"http_statuses\": {");
    for (int i = 0, first = 1; i < 600; i++)
        if (st.status[i]) {
            fprintf(f, "%s\"%d\": %lu", first ? "" : ", ", i, (unsigned long)st.status[i]);
            first = 0;
        }
    fprintf(f, "},\n");
    fprintf(f,
            "  \"sent\": %lu,\n  \"received\": %lu,\n  \"lost\": %lu,\n  \"errors\": %lu,\n"
            "  \"duration_s\": %.3f,\n  \"send_rate_per_s\": %.1f,\n",
            (unsigned long)st.sent, (unsigned long)st.answered, (unsigned long)lost,
            (unsigned long)errors, dur, dur > 0 ? (double)st.sent / dur : 0.0);
    if (h_count)
        fprintf(f,
                "  \"rtt_us\": {\"p50\": %lu, \"p90\": %lu, \"p99\": %lu, \"p999\": %lu, "
                "\"max\": %lu, \"mean\": %.1f, \"samples\": %lu},\n",
                (unsigned long)hist_pct(0.5), (unsigned long)hist_pct(0.9),
                (unsigned long)hist_pct(0.99), (unsigned long)hist_pct(0.999),
                (unsigned long)h_max, h_sum / (double)h_count, (unsigned long)h_count);
    else
        fprintf(f, "  \"rtt_us\": {\"p50\": null, \"p90\": null, \"p99\": null, \"p999\": null, "
                   "\"max\": null, \"mean\": null, \"samples\": 0},\n");
    fprintf(f,
            "  \"late_sends\": %lu,\n  \"late_sends_total\": %lu,\n  \"max_send_lag_us\": %.1f,\n"
            "  \"sent_total\": %lu,\n  \"received_total\": %lu,\n  \"unmatched\": %lu,\n"
            "  \"other_events\": %lu,\n  \"sessions_dropped\": %lu,\n  \"close_timeouts\": %lu,\n",
            (unsigned long)st.late_sends, (unsigned long)st.late_sends_total,
            (double)st.max_lag_ns / 1e3, (unsigned long)st.sent_total,
            (unsigned long)st.received_total, (unsigned long)st.unmatched,
            (unsigned long)st.other_events, (unsigned long)st.dropped,
            (unsigned long)st.close_timeouts);
    fprintf(f,
            "  \"error_kinds\": {\"protocol\": %lu, \"unsupported_frames\": %lu, "
            "\"overflows\": %lu, \"io\": %lu, \"server_closes\": %lu},\n",
            (unsigned long)st.protocol_errors, (unsigned long)st.unsupported_frames,
            (unsigned long)st.overflows, (unsigned long)st.io_errors,
            (unsigned long)st.server_closes);
    fprintf(f,
            "  \"interval_ms\": %.3f,\n  \"chunk_bytes\": %ld,\n  \"append_payload_bytes\": %lu,\n"
            "  \"warmup_s\": %.3f,\n  \"connect_s\": %.3f,\n",
            (double)cfg.interval_ns / 1e6, cfg.chunk,
            (unsigned long)(append_plen_base + 6), (double)cfg.warmup_ns / 1e9,
            (double)(connect_done - t0) / 1e9);
    fprintf(f,
            "  \"frames_in\": %lu,\n  \"frames_out\": %lu,\n  \"bytes_in\": %lu,\n"
            "  \"bytes_out\": %lu,\n  \"cpu_user_s\": %.3f,\n  \"cpu_sys_s\": %.3f,\n"
            "  \"run_cpu_s\": %.3f,\n  \"run_frames\": %lu,\n  \"cpu_us_per_frame\": %.2f\n}\n",
            (unsigned long)st.frames_in, (unsigned long)st.frames_out,
            (unsigned long)st.bytes_in, (unsigned long)st.bytes_out, tv_s(ru.ru_utime),
            tv_s(ru.ru_stime), run_cpu, (unsigned long)st.frames_run,
            st.frames_run ? run_cpu * 1e6 / (double)st.frames_run : 0.0);
    if (fclose(f) != 0 || rename(tmp, cfg.out) != 0) {
        unlink(tmp);
        return -1;
    }
    fprintf(stderr,
            "loadgen: %ld/%ld sessions, sent %lu received %lu lost %lu errors %lu late %lu, "
            "rtt p50 %lu us p99 %lu us\n",
            connected_n, cfg.sessions, (unsigned long)st.sent, (unsigned long)st.answered,
            (unsigned long)lost, (unsigned long)errors, (unsigned long)st.late_sends,
            (unsigned long)(h_count ? hist_pct(0.5) : 0),
            (unsigned long)(h_count ? hist_pct(0.99) : 0));
    return 0;
}

/* CSV, one line per measured send in send order: the send time (CLOCK_MONOTONIC,
 * microseconds), the session index, the round trip (us; -1 if unanswered). */
static int write_trace(void)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", cfg.trace) >= (int)sizeof tmp)
        return -1;
    FILE *f = fopen(tmp, "w");
    if (!f)
        return -1;
    fprintf(f, "send_us,session,rtt_us\n");
    for (size_t k = 0; k < trace_n; k++)
        fprintf(f, "%lu,%u,%ld\n", (unsigned long)(trace[k].send_ns / 1000), trace[k].sess,
                (long)trace[k].rtt_us);
    if (fclose(f) != 0 || rename(tmp, cfg.trace) != 0) {
        unlink(tmp);
        return -1;
    }
    return 0;
}

/* ---- command line ---- */

static void usage(FILE *to)
{
    fprintf(to,
            "usage: loadgen --url ws://HOST:PORT/PATH?QUERY [--header 'Name: value']...\n"
            "               --sessions N [--interval-ms 20] [--chunk-bytes 960]\n"
            "               --duration S [--warmup S] [--connect-rate R] [--connect-timeout S]\n"
            "               [--tick-us 500] [--trace sends.csv] --out results.json\n"
            "       loadgen --selftest\n");
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
    if (strncmp(url, "ws://", 5) != 0) {
        fprintf(stderr, "loadgen: only ws:// URLs are supported\n");
        return -1;
    }
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
    const char *hs = cfg.hostport, *he, *colon;
    if (hs[0] == '[') {
        he = strchr(hs, ']');
        if (!he)
            return -1;
        colon = he[1] == ':' ? he + 1 : NULL;
        hs++;
    } else {
        colon = strrchr(hs, ':');
        he = colon ? colon : hs + hl;
    }
    if ((size_t)(he - hs) >= sizeof cfg.host || he == hs)
        return -1;
    memcpy(cfg.host, hs, (size_t)(he - hs));
    cfg.host[he - hs] = '\0';
    snprintf(cfg.port, sizeof cfg.port, "%.15s", colon ? colon + 1 : "80");
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai;
    int r = getaddrinfo(cfg.host, cfg.port, &hints, &ai);
    if (r != 0) {
        fprintf(stderr, "loadgen: %s: %s\n", cfg.host, gai_strerror(r));
        return -1;
    }
    memcpy(&cfg.addr, ai->ai_addr, ai->ai_addrlen);
    cfg.addrlen = ai->ai_addrlen;
    freeaddrinfo(ai);
    return 0;
}

static int add_header(size_t *len, const char *h)
{
    const char *colon = strchr(h, ':');
    if (!colon || colon == h || strpbrk(h, "\r\n")) {
        fprintf(stderr, "loadgen: bad --header '%s' (want 'Name: value')\n", h);
        return -1;
    }
    size_t hl = strlen(h);
    char *e = realloc(cfg.extra, *len + hl + 3);
    if (!e)
        return -1;
    cfg.extra = e;
    memcpy(e + *len, h, hl);
    memcpy(e + *len + hl, "\r\n", 3);
    *len += hl + 2;
    if ((size_t)(colon - h) == 22 && strncasecmp(h, "Sec-WebSocket-Protocol", 22) == 0)
        cfg.offers_protocol = 1;
    return 0;
}

int main(int argc, char **argv)
{
    double interval_ms = 20, duration = -1, warmup = 0, connect_timeout = 30, tick_us = 500,
           sessions = -1, chunk = 960;
    const char *url = NULL;
    size_t extra_len = 0;
    cfg.rate = 500;
    static const struct option opts[] = {
        {"url", required_argument, NULL, 'u'},
        {"header", required_argument, NULL, 'H'},
        {"sessions", required_argument, NULL, 'n'},
        {"interval-ms", required_argument, NULL, 'i'},
        {"chunk-bytes", required_argument, NULL, 'c'},
        {"duration", required_argument, NULL, 'd'},
        {"warmup", required_argument, NULL, 'w'},
        {"connect-rate", required_argument, NULL, 'r'},
        {"connect-timeout", required_argument, NULL, 'C'},
        {"tick-us", required_argument, NULL, 't'},
        {"out", required_argument, NULL, 'o'},
        {"trace", required_argument, NULL, 'x'},
        {"selftest", no_argument, NULL, 'T'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    int o, bad = 0;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'u': url = optarg; break;
        case 'H': bad |= add_header(&extra_len, optarg) < 0; break;
        case 'n': bad |= parse_double(optarg, 1, 1000000, &sessions) < 0; break;
        case 'i': bad |= parse_double(optarg, 0.01, 3600e3, &interval_ms) < 0; break;
        case 'c': bad |= parse_double(optarg, 0, (double)MAX_CHUNK, &chunk) < 0; break;
        case 'd': bad |= parse_double(optarg, 0.001, 86400, &duration) < 0; break;
        case 'w': bad |= parse_double(optarg, 0, 86400, &warmup) < 0; break;
        case 'r': bad |= parse_double(optarg, 0.001, 1e9, &cfg.rate) < 0; break;
        case 'C': bad |= parse_double(optarg, 0, 86400, &connect_timeout) < 0; break;
        case 't': bad |= parse_double(optarg, 50, 1e6, &tick_us) < 0; break;
        case 'o': cfg.out = optarg; break;
        case 'x': cfg.trace = optarg; break;
        case 'T': free(cfg.extra); return ws_selftest() ? 1 : 0;
        case 'h': usage(stdout); free(cfg.extra); return 0;
        default: bad = 1;
        }
    }
    if (bad || !url || sessions < 1 || duration <= 0 || !cfg.out || optind != argc ||
        sessions != floor(sessions) || chunk != floor(chunk) || parse_url(url) < 0) {
        if (url && !bad)
            fprintf(stderr, "loadgen: bad arguments (check --url)\n");
        usage(stderr);
        free(cfg.extra);
        return 2;
    }
    cfg.sessions = (long)sessions;
    cfg.chunk = (long)chunk;
    cfg.interval_ns = (uint64_t)llround(interval_ms * 1e6);
    cfg.duration_ns = (uint64_t)llround(duration * 1e9);
    cfg.warmup_ns = (uint64_t)llround(warmup * 1e9);
    cfg.connect_timeout_ns = (uint64_t)llround(connect_timeout * 1e9);
    cfg.tick_ns = (uint64_t)llround(tick_us * 1e3);

    signal(SIGPIPE, SIG_IGN);
    long nofile = raise_nofile();
    if (nofile > 0 && cfg.sessions + 32 > nofile) {
        fprintf(stderr, "loadgen: %ld sessions need more file descriptors (limit %ld)\n",
                cfg.sessions, nofile);
        free(cfg.extra);
        return 2;
    }
    rng = random_seed();

    /* The append's constant tail: ","audio":"<base64 of chunk bytes>"} */
    uint8_t *pcm = malloc((size_t)cfg.chunk + 1);
    size_t b64_len = 4 * (((size_t)cfg.chunk + 2) / 3);
    append_tail = malloc(b64_len + 32);
    req_len = strlen(cfg.path) + strlen(cfg.hostport) + extra_len + 256;
    req = malloc(req_len);
    scratch = malloc(14 + 128 + b64_len + 64 + HS_MAX + req_len);
    S = calloc((size_t)cfg.sessions, sizeof *S);
    up = calloc((size_t)cfg.sessions, sizeof *up);
    if (cfg.trace) {
        /* Every measured send of every session: ceil(duration / interval) each. */
        trace_cap = (size_t)cfg.sessions *
                    (size_t)((cfg.duration_ns + cfg.interval_ns - 1) / cfg.interval_ns + 1);
        trace = malloc(trace_cap * sizeof *trace);
    }
    if (!pcm || !append_tail || !req || !scratch || !S || !up || (cfg.trace && !trace)) {
        fprintf(stderr, "loadgen: out of memory\n");
        return 1;
    }
    for (long i = 0; i < cfg.chunk; i++)
        pcm[i] = (uint8_t)xorshift64(&rng);
    static const char P2[] = "\",\"audio\":\"";
    memcpy(append_tail, P2, sizeof P2 - 1);
    base64_encode(pcm, (size_t)cfg.chunk, append_tail + sizeof P2 - 1);
    memcpy(append_tail + sizeof P2 - 1 + b64_len, "\"}", 2);
    tail_len = sizeof P2 - 1 + b64_len + 2;
    append_plen_base = strlen("{\"type\":\"input_audio_buffer.append\",\"event_id\":\"") + tail_len;
    free(pcm);
    int has_host = 0;
    if (cfg.extra)
        for (const char *l = cfg.extra; *l; l = strstr(l, "\r\n") + 2)
            has_host |= strncasecmp(l, "Host:", 5) == 0;
    char hostline[320] = "";
    if (!has_host)
        snprintf(hostline, sizeof hostline, "Host: %s\r\n", cfg.hostport);
    req_len = (size_t)snprintf(req, req_len,
                               "GET %s HTTP/1.1\r\n%sUpgrade: websocket\r\nConnection: Upgrade\r\n"
                               "Sec-WebSocket-Version: 13\r\n%s",
                               cfg.path, hostline, cfg.extra ? cfg.extra : "");
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
    struct itimerspec its = {
        .it_interval = {.tv_sec = (time_t)(cfg.tick_ns / NS), .tv_nsec = (long)(cfg.tick_ns % NS)},
        .it_value = {.tv_sec = 0, .tv_nsec = 1}};
    struct epoll_event tev = {.events = EPOLLIN, .data.u64 = TAG_TIMER};
    struct epoll_event sev = {.events = EPOLLIN, .data.u64 = TAG_SIGNAL};
    if (sfd < 0 || tfd < 0 || ep < 0 || timerfd_settime(tfd, 0, &its, NULL) < 0 ||
        epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &tev) < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &sev) < 0) {
        perror("loadgen: setup");
        return 1;
    }

    t0 = now_ns();
    connect_deadline = t0 + cfg.connect_timeout_ns;
    int status = 0;
    struct epoll_event evs[MAX_EVENTS];
    while (phase != P_DONE) {
        int n = epoll_wait(ep, evs, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            perror("loadgen: epoll_wait");
            status = 1;
            break;
        }
        for (int k = 0; k < n && phase != P_DONE; k++) {
            uint64_t tag = evs[k].data.u64;
            if (tag == TAG_TIMER) {
                uint64_t expirations;
                if (read(tfd, &expirations, sizeof expirations) > 0)
                    tick();
            } else if (tag == TAG_SIGNAL) {
                struct signalfd_siginfo si;
                while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si)
                    on_stop_signal();
                tick();
            } else {
                on_io((long)tag, evs[k].events);
            }
        }
    }
    if (!ru_run1_set) {
        getrusage(RUSAGE_SELF, &ru_run1);
        ru_run1_set = 1;
        st.frames_run = 0;
    }
    if (write_results() < 0) {
        perror("loadgen: --out");
        status = 1;
    }
    if (cfg.trace && write_trace() < 0) {
        perror("loadgen: --trace");
        status = 1;
    }
    for (long i = 0; i < cfg.sessions; i++)
        if (S[i].state != S_IDLE && S[i].state != S_DONE)
            sess_close_fd(&S[i]);
    close(ep);
    close(tfd);
    close(sfd);
    free(S);
    free(up);
    free(scratch);
    free(req);
    free(append_tail);
    free(trace);
    free(cfg.extra);
    return status;
}
