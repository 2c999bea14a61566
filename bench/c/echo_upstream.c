/* echo_upstream: a single-threaded epoll WebSocket server playing the Azure
 * OpenAI Realtime API for benchmarks. See README.md. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "ws.h"

#include <errno.h>
#include <getopt.h>
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
#include <unistd.h>

#define MAX_FRAME_DEFAULT ((size_t)1 << 20) /* largest accepted payload */
#define IN_INIT ((size_t)16384)
#define OUT_INIT ((size_t)16384)
#define OUT_MIN_MAX ((size_t)8 << 20) /* unsent bytes per connection, at least */
#define HS_MAX ((size_t)16384)        /* request head */
#define READ_MIN ((size_t)4096)
#define MAX_EVENTS 256
#define MAX_FLOODS 8
#define FLOOD_CHUNK ((size_t)65536) /* flood frames queued per refill */

enum { ST_HS, ST_OPEN, ST_CLOSING };
enum { FLOOD_NONE, FLOOD_PING, FLOOD_TEXT };

/* --max-frame: the largest payload accepted; buffers are sized from it. */
static size_t max_frame = MAX_FRAME_DEFAULT, in_max, out_max;

/* --flood KIND:MARKER: connections whose request target contains MARKER are
 * flooded with KIND frames once they are open (see README.md). */
static struct {
    int kind;
    const char *marker;
} floods[MAX_FLOODS];
static int n_floods;
/* --no-deltas: appends are counted, never answered (an upstream that only listens). */
static int no_deltas;

struct conn {
    int fd, state, dead;
    int flood;    /* FLOOD_* chosen at the handshake */
    int flooding; /* the flood has started (after the first session.update) */
    uint32_t events; /* current epoll interest */
    size_t hs_scan;
    struct buf in, out;
    struct conn *prev, *next; /* live list; `next` chains the dead list */
};

static struct {
    uint64_t connections, handshakes, open, open_max, frames_in, frames_out, bytes_in,
        bytes_out, appends, session_updates, ignored, pings, close_frames, eof_without_close,
        handshake_failures, protocol_errors, unsupported_frames, overflows, io_errors,
        accept_errors, flooded, flood_frames;
} st;

static int ep = -1;
static struct conn *live, *dead;
static int listen_tag, signal_tag; /* epoll data pointers for the non-connection fds */

/* The events sent, in the preview protocol's shapes and names, or with --ga
 * in GA's: the session nested under "audio" with "type":"realtime", and the
 * audio delta named response.output_audio.delta. Only the name and the session
 * shape differ; the delta's fields are the same in both protocols. */
static const char CREATED[] =
    "{\"type\":\"session.created\",\"event_id\":\"event_0\",\"session\":{\"id\":\"sess_bench\","
    "\"object\":\"realtime.session\",\"input_audio_format\":\"pcm16\","
    "\"output_audio_format\":\"pcm16\"}}";
static const char UPDATED[] = "{\"type\":\"session.updated\",\"event_id\":\"event_2\","
                              "\"session\":{\"id\":\"sess_bench\",\"object\":\"realtime.session\"}}";
static const char D1[] = "{\"type\":\"response.audio.delta\",\"event_id\":\"event_1\",\"response_id\":\"";
static const char CREATED_GA[] =
    "{\"type\":\"session.created\",\"event_id\":\"event_0\",\"session\":{\"type\":\"realtime\","
    "\"id\":\"sess_bench\",\"object\":\"realtime.session\",\"output_modalities\":[\"audio\"],"
    "\"audio\":{\"input\":{\"format\":{\"type\":\"audio/pcm\",\"rate\":24000}},"
    "\"output\":{\"format\":{\"type\":\"audio/pcm\",\"rate\":24000}}}}}";
static const char UPDATED_GA[] =
    "{\"type\":\"session.updated\",\"event_id\":\"event_2\",\"session\":{\"type\":\"realtime\","
    "\"id\":\"sess_bench\",\"object\":\"realtime.session\"}}";
static const char D1_GA[] =
    "{\"type\":\"response.output_audio.delta\",\"event_id\":\"event_1\",\"response_id\":\"";
static const char D2[] = "\",\"item_id\":\"item_1\",\"output_index\":0,\"content_index\":0,\"delta\":\"";
static const char D3[] = "\"}";
#define SLEN(s) (sizeof(s) - 1)

/* The protocol's texts this run sends (main() picks GA's on --ga). */
struct text {
    const char *s;
    size_t len;
};
static struct text created = {CREATED, SLEN(CREATED)}, updated = {UPDATED, SLEN(UPDATED)},
                   delta_head = {D1, SLEN(D1)};

static void conn_close(struct conn *c)
{
    if (c->dead)
        return;
    c->dead = 1;
    close(c->fd);
    c->fd = -1;
    if (c->prev)
        c->prev->next = c->next;
    else
        live = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->next = dead;
    dead = c;
    st.open--;
}

static void conn_free(struct conn *c)
{
    buf_free(&c->in);
    buf_free(&c->out);
    free(c);
}

static void set_events(struct conn *c, uint32_t events)
{
    if (c->events == events)
        return;
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) == 0)
        c->events = events;
}

/* Room for n more output bytes, or the connection is dropped (overflow). */
static uint8_t *out_room(struct conn *c, size_t n)
{
    if (buf_reserve(&c->out, n) < 0) {
        st.overflows++;
        conn_close(c);
        return NULL;
    }
    return c->out.data + c->out.len;
}

static void out_frame(struct conn *c, unsigned opcode, const void *payload, size_t len)
{
    uint8_t *p = out_room(c, 10 + len);
    if (!p)
        return;
    size_t h = ws_header(p, opcode, len, NULL);
    if (len)
        memcpy(p + h, payload, len);
    c->out.len += h + len;
    st.frames_out++;
}

/* Send a close frame with `code`, then close once it is written. */
static void fail(struct conn *c, unsigned code)
{
    uint8_t pl[2] = {(uint8_t)(code >> 8), (uint8_t)code};
    out_frame(c, WS_CLOSE, pl, 2);
    c->state = ST_CLOSING;
}

/* Queue FLOOD_CHUNK bytes of flood frames (empty pings, or `{}` text frames). */
static void flood_refill(struct conn *c)
{
    static const uint8_t PING_FRAME[2] = {0x80 | WS_PING, 0};
    static const uint8_t TEXT_FRAME[4] = {0x80 | WS_TEXT, 2, '{', '}'};
    const uint8_t *f = c->flood == FLOOD_PING ? PING_FRAME : TEXT_FRAME;
    size_t fl = c->flood == FLOOD_PING ? sizeof PING_FRAME : sizeof TEXT_FRAME;
    size_t n = FLOOD_CHUNK / fl;
    uint8_t *p = out_room(c, n * fl);
    if (!p)
        return;
    for (size_t i = 0; i < n; i++)
        memcpy(p + i * fl, f, fl);
    c->out.len += n * fl;
    st.frames_out += n;
    st.flood_frames += n;
}

static void flush(struct conn *c)
{
    /* A flooded connection always has more to send while it is open: the
     * flood goes as fast as the peer reads. */
    if (c->flooding && c->state == ST_OPEN && buf_used(&c->out) < FLOOD_CHUNK)
        flood_refill(c);
    if (c->dead)
        return;
    size_t pending = buf_used(&c->out);
    if (pending) {
        ssize_t n = write(c->fd, c->out.data + c->out.start, pending);
        if (n < 0) {
            if (errno != EAGAIN && errno != EINTR) {
                st.io_errors++;
                conn_close(c);
                return;
            }
            n = 0;
        }
        st.bytes_out += (uint64_t)n;
        buf_consume(&c->out, (size_t)n);
        pending -= (size_t)n;
    }
    if (pending || (c->flooding && c->state == ST_OPEN))
        set_events(c, c->state == ST_CLOSING ? EPOLLOUT : EPOLLIN | EPOLLOUT);
    else if (c->state == ST_CLOSING)
        conn_close(c);
    else
        set_events(c, EPOLLIN);
}

static void handshake(struct conn *c)
{
    const char *h = (const char *)c->in.data + c->in.start;
    size_t n = buf_used(&c->in);
    size_t from = c->hs_scan > 3 ? c->hs_scan - 3 : 0;
    const char *e = memmem(h + from, n - from, "\r\n\r\n", 4);
    if (!e) {
        c->hs_scan = n;
        if (n > HS_MAX) {
            st.handshake_failures++;
            conn_close(c);
        }
        return;
    }
    size_t hl = (size_t)(e + 4 - h);
    const char *key;
    size_t kl;
    if (hl < 4 || memcmp(h, "GET ", 4) != 0 || !http_header(h, hl, "Sec-WebSocket-Key", &key, &kl) ||
        kl == 0 || kl > WS_KEY_MAX) {
        static const char bad[] = "HTTP/1.1 400 Bad Request\r\nConnection: close\r\n"
                                  "Content-Length: 0\r\n\r\n";
        st.handshake_failures++;
        buf_consume(&c->in, n);
        uint8_t *p = out_room(c, SLEN(bad));
        if (p) {
            memcpy(p, bad, SLEN(bad));
            c->out.len += SLEN(bad);
            c->state = ST_CLOSING;
        }
        return;
    }
    char acc[29], resp[160];
    ws_accept_key(key, kl, acc);
    /* Never selects an extension or a subprotocol. */
    int rl = snprintf(resp, sizeof resp,
                      "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
                      acc);
    /* The request target is the first line's second word. */
    const char *line_end = memchr(h, '\r', hl);
    size_t target_len = line_end ? (size_t)(line_end - h) : hl;
    for (int i = 0; i < n_floods && !c->flood; i++)
        if (memmem(h, target_len, floods[i].marker, strlen(floods[i].marker)))
            c->flood = floods[i].kind;
    if (c->flood)
        st.flooded++;
    buf_consume(&c->in, hl);
    uint8_t *p = out_room(c, (size_t)rl);
    if (!p)
        return;
    memcpy(p, resp, (size_t)rl);
    c->out.len += (size_t)rl;
    c->state = ST_OPEN;
    st.handshakes++;
    out_frame(c, WS_TEXT, created.s, created.len);
}

static void on_text(struct conn *c, const uint8_t *pl, size_t len)
{
    static const char APPEND[] = "\"input_audio_buffer.append\"";
    static const char UPDATE[] = "\"session.update\"";
    if (memmem(pl, len, APPEND, SLEN(APPEND)) && no_deltas) {
        st.appends++;
    } else if (memmem(pl, len, APPEND, SLEN(APPEND))) {
        const uint8_t *eid = (const uint8_t *)"", *aud = eid;
        size_t el = 0, al = 0;
        json_str(pl, len, "\"event_id\"", &eid, &el);
        json_str(pl, len, "\"audio\"", &aud, &al);
        size_t plen = delta_head.len + el + SLEN(D2) + al + SLEN(D3);
        uint8_t *p = out_room(c, 10 + plen);
        if (!p)
            return;
        p += ws_header(p, WS_TEXT, plen, NULL);
        memcpy(p, delta_head.s, delta_head.len);
        p += delta_head.len;
        memcpy(p, eid, el);
        p += el;
        memcpy(p, D2, SLEN(D2));
        p += SLEN(D2);
        memcpy(p, aud, al);
        p += al;
        memcpy(p, D3, SLEN(D3));
        p += SLEN(D3);
        c->out.len = (size_t)(p - c->out.data);
        st.appends++;
        st.frames_out++;
    } else if (memmem(pl, len, UPDATE, SLEN(UPDATE))) {
        st.session_updates++;
        out_frame(c, WS_TEXT, updated.s, updated.len);
        /* The session is open at the relay once it has session.updated: the
         * flood starts behind it. */
        c->flooding = c->flood != FLOOD_NONE;
    } else {
        st.ignored++;
    }
}

static void frames(struct conn *c)
{
    while (c->state == ST_OPEN && !c->dead) {
        uint8_t *p = c->in.data + c->in.start;
        size_t n = buf_used(&c->in);
        struct ws_frame f;
        int r = ws_parse(p, n, &f);
        if (r == 0)
            return;
        if (r < 0 || !f.masked) { /* client frames must be masked */
            st.protocol_errors++;
            fail(c, 1002);
            return;
        }
        if (f.len > max_frame) {
            st.overflows++;
            fail(c, 1009);
            return;
        }
        if (n - f.hdr < f.len)
            return; /* incomplete: the read path grows the buffer */
        uint8_t *pl = p + f.hdr;
        size_t len = (size_t)f.len;
        ws_mask(pl, len, f.mask);
        st.frames_in++;
        switch (f.opcode) {
        case WS_TEXT:
            if (f.fin)
                on_text(c, pl, len);
            else
                st.unsupported_frames++; /* fragmentation is not supported */
            break;
        case WS_BIN:
            if (f.fin)
                st.ignored++;
            else
                st.unsupported_frames++;
            break;
        case WS_CONT:
            st.unsupported_frames++;
            break;
        case WS_PING:
            st.pings++;
            out_frame(c, WS_PONG, pl, len);
            break;
        case WS_PONG:
            break;
        case WS_CLOSE:
            st.close_frames++;
            out_frame(c, WS_CLOSE, pl, len >= 2 ? 2 : 0);
            c->state = ST_CLOSING;
            break;
        }
        if (c->dead)
            return;
        buf_consume(&c->in, f.hdr + len);
    }
}

static void on_readable(struct conn *c)
{
    if (buf_reserve(&c->in, READ_MIN) < 0) {
        st.overflows++;
        conn_close(c);
        return;
    }
    ssize_t n = read(c->fd, c->in.data + c->in.len, c->in.cap - c->in.len);
    if (n == 0) {
        if (c->state == ST_OPEN)
            st.eof_without_close++;
        conn_close(c);
        return;
    }
    if (n < 0) {
        if (errno != EAGAIN && errno != EINTR) {
            st.io_errors++;
            conn_close(c);
        }
        return;
    }
    st.bytes_in += (uint64_t)n;
    c->in.len += (size_t)n;
    if (c->state == ST_HS)
        handshake(c);
    if (c->state == ST_OPEN && !c->dead)
        frames(c);
    if (!c->dead)
        flush(c);
}

static void on_accept(int lfd)
{
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno != EAGAIN)
                st.accept_errors++;
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *c = calloc(1, sizeof *c);
        if (!c || buf_init(&c->in, IN_INIT, in_max, 1) < 0) {
            free(c);
            close(fd);
            st.accept_errors++;
            continue;
        }
        buf_init(&c->out, OUT_INIT, out_max, 0);
        c->fd = fd;
        c->state = ST_HS;
        c->events = EPOLLIN;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
            conn_free(c);
            close(fd);
            st.accept_errors++;
            continue;
        }
        c->next = live;
        if (live)
            live->prev = c;
        live = c;
        st.connections++;
        if (++st.open > st.open_max)
            st.open_max = st.open;
    }
}

static int write_stats(const char *path)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return -1;
    FILE *f = fopen(tmp, "w");
    if (!f)
        return -1;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    uint64_t errors = st.handshake_failures + st.protocol_errors + st.unsupported_frames +
                      st.overflows + st.io_errors + st.accept_errors;
    fprintf(f,
            "{\"connections\": %lu, \"handshakes\": %lu, \"open\": %lu, \"open_max\": %lu, "
            "\"frames_in\": %lu, \"frames_out\": %lu, \"bytes_in\": %lu, \"bytes_out\": %lu, "
            "\"appends\": %lu, \"session_updates\": %lu, \"ignored\": %lu, \"pings\": %lu, "
            "\"close_frames\": %lu, \"eof_without_close\": %lu, \"errors\": %lu, "
            "\"handshake_failures\": %lu, \"protocol_errors\": %lu, \"unsupported_frames\": %lu, "
            "\"overflows\": %lu, \"io_errors\": %lu, \"accept_errors\": %lu, "
            "\"flooded\": %lu, \"flood_frames\": %lu, "
            "\"cpu_user_s\": %.3f, \"cpu_sys_s\": %.3f}\n",
            (unsigned long)st.connections, (unsigned long)st.handshakes, (unsigned long)st.open,
            (unsigned long)st.open_max, (unsigned long)st.frames_in,
            (unsigned long)st.frames_out, (unsigned long)st.bytes_in,
            (unsigned long)st.bytes_out, (unsigned long)st.appends,
            (unsigned long)st.session_updates, (unsigned long)st.ignored,
            (unsigned long)st.pings, (unsigned long)st.close_frames,
            (unsigned long)st.eof_without_close, (unsigned long)errors,
            (unsigned long)st.handshake_failures, (unsigned long)st.protocol_errors,
            (unsigned long)st.unsupported_frames, (unsigned long)st.overflows,
            (unsigned long)st.io_errors, (unsigned long)st.accept_errors,
            (unsigned long)st.flooded, (unsigned long)st.flood_frames,
            (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6,
            (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6);
    if (fclose(f) != 0 || rename(tmp, path) != 0) {
        unlink(tmp);
        return -1;
    }
    return 0;
}

/* "ping:MARKER" or "text:MARKER" -> floods[]; -1 if malformed or too many. */
static int add_flood(const char *arg)
{
    const char *colon = strchr(arg, ':');
    if (!colon || !colon[1] || n_floods == MAX_FLOODS)
        return -1;
    size_t kl = (size_t)(colon - arg);
    if (kl == 4 && memcmp(arg, "ping", 4) == 0)
        floods[n_floods].kind = FLOOD_PING;
    else if (kl == 4 && memcmp(arg, "text", 4) == 0)
        floods[n_floods].kind = FLOOD_TEXT;
    else
        return -1;
    floods[n_floods++].marker = colon + 1;
    return 0;
}

static void usage(FILE *to)
{
    fprintf(to, "usage: echo_upstream --host ADDR --port PORT [--stats-file PATH] "
                "[--backlog N]\n"
                "                     [--max-frame BYTES] [--no-deltas] [--ga] [--flood ping|text:MARKER]...\n"
                "       echo_upstream --selftest\n"
                "PORT 0 picks a free port; the first stdout line is "
                "'echo_upstream listening on ADDR:PORT'.\n"
                "SIGTERM/SIGINT: write --stats-file and exit 0; SIGUSR1: write it and go on.\n");
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1", *port = NULL, *stats_path = NULL;
    int backlog = 4096;
    static const struct option opts[] = {
        {"host", required_argument, NULL, 'h'},       {"port", required_argument, NULL, 'p'},
        {"stats-file", required_argument, NULL, 's'}, {"backlog", required_argument, NULL, 'b'},
        {"max-frame", required_argument, NULL, 'm'},  {"flood", required_argument, NULL, 'f'},
        {"no-deltas", no_argument, NULL, 'D'},      {"ga", no_argument, NULL, 'G'},
        {"selftest", no_argument, NULL, 'T'},         {"help", no_argument, NULL, 'H'},
        {NULL, 0, NULL, 0}};
    char *end;
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'h': host = optarg; break;
        case 'p': port = optarg; break;
        case 's': stats_path = optarg; break;
        case 'b': backlog = atoi(optarg); break;
        case 'D': no_deltas = 1; break;
        case 'G':
            created = (struct text){CREATED_GA, SLEN(CREATED_GA)};
            updated = (struct text){UPDATED_GA, SLEN(UPDATED_GA)};
            delta_head = (struct text){D1_GA, SLEN(D1_GA)};
            break;
        case 'm':
            errno = 0;
            max_frame = (size_t)strtoull(optarg, &end, 10);
            if (errno || *end || max_frame < 125 || max_frame > ((size_t)256 << 20)) {
                usage(stderr);
                return 2;
            }
            break;
        case 'f':
            if (add_flood(optarg) < 0) {
                usage(stderr);
                return 2;
            }
            break;
        case 'T': return ws_selftest() ? 1 : 0;
        case 'H': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!port || optind != argc || backlog <= 0) {
        usage(stderr);
        return 2;
    }
    in_max = max_frame + 65536;
    /* Room for an answer to the largest append (its audio echoed) beside
     * whatever is queued already. */
    out_max = 2 * max_frame + 65536 > OUT_MIN_MAX ? 2 * max_frame + 65536 : OUT_MIN_MAX;
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();

    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICHOST | AI_NUMERICSERV};
    struct addrinfo *ai;
    int gr = getaddrinfo(host, port, &hints, &ai);
    if (gr != 0) {
        fprintf(stderr, "echo_upstream: bad --host/--port: %s\n", gai_strerror(gr));
        return 2;
    }
    int lfd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(lfd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(lfd, backlog) < 0) {
        perror("echo_upstream: listen");
        freeaddrinfo(ai);
        return 1;
    }
    freeaddrinfo(ai);
    struct sockaddr_storage sa;
    socklen_t sl = sizeof sa;
    getsockname(lfd, (struct sockaddr *)&sa, &sl);
    unsigned bound = ntohs(sa.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&sa)->sin6_port
                                                    : ((struct sockaddr_in *)&sa)->sin_port);

    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGUSR1);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    int sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = &listen_tag};
    struct epoll_event sev = {.events = EPOLLIN, .data.ptr = &signal_tag};
    if (sfd < 0 || ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev) < 0 ||
        epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &sev) < 0) {
        perror("echo_upstream: setup");
        return 1;
    }
    printf("echo_upstream listening on %s:%u\n", host, bound);
    fflush(stdout);

    int running = 1, status = 0;
    struct epoll_event evs[MAX_EVENTS];
    while (running) {
        int n = epoll_wait(ep, evs, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            perror("echo_upstream: epoll_wait");
            status = 1;
            break;
        }
        for (int i = 0; i < n; i++) {
            void *tag = evs[i].data.ptr;
            if (tag == &listen_tag) {
                on_accept(lfd);
            } else if (tag == &signal_tag) {
                struct signalfd_siginfo si;
                while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si) {
                    if (si.ssi_signo == SIGUSR1) {
                        if (stats_path && write_stats(stats_path) < 0)
                            perror("echo_upstream: stats file");
                    } else {
                        running = 0;
                    }
                }
            } else {
                struct conn *c = tag;
                if (c->dead)
                    continue;
                uint32_t e = evs[i].events;
                if (e & EPOLLOUT)
                    flush(c);
                if (!c->dead && (e & (EPOLLIN | EPOLLHUP | EPOLLERR))) {
                    if (c->state == ST_CLOSING && (e & EPOLLIN) == 0)
                        conn_close(c);
                    else if (c->state != ST_CLOSING)
                        on_readable(c);
                }
            }
        }
        while (dead) {
            struct conn *c = dead;
            dead = c->next;
            conn_free(c);
        }
    }
    if (stats_path && write_stats(stats_path) < 0) {
        perror("echo_upstream: stats file");
        status = 1;
    }
    while (live)
        conn_close(live);
    while (dead) {
        struct conn *c = dead;
        dead = c->next;
        conn_free(c);
    }
    close(ep);
    close(sfd);
    close(lfd);
    return status;
}
