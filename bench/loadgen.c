/* A closed-loop HTTP/1.1 load generator over a Unix socket, for bureau's benchmarks.
 *
 * C keep-alive connections each send one request, read the whole response (Content-Length
 * or chunked), record its latency and send the next, for D seconds, from one thread with
 * epoll, so one core drives the server under test. Prints one JSON line:
 *   {"requests": N, "errors": E, "seconds": S, "rps": R, "p50_us": .., "p99_us": .., "bytes": B}
 *
 * usage: loadgen [-m METHOD] [-b BYTES] SOCKET PATH CONNECTIONS SECONDS [HEADER ...]
 * -m sets the method (GET); -b sends a body of BYTES bytes with its Content-Length.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define BUF (256 * 1024)
#define MAX_SAMPLES (8 * 1000 * 1000)

enum state { HEADERS, BODY, CHUNK_SIZE, CHUNK_DATA, CHUNK_CRLF, TRAILERS };

struct conn {
    int fd;
    char *buf;
    size_t len;
    enum state st;
    long remaining; /* body bytes, or chunk bytes, left to read */
    uint64_t started_ns;
    int status;
};

static const char *sock_path;
static char request[8192];
static size_t request_len;
static uint32_t *samples; /* latencies in microseconds */
static long nsamples, errors;
static uint64_t body_bytes;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int connect_unix(void) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    strncpy(addr.sun_path, sock_path, sizeof addr.sun_path - 1);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    return fd;
}

static int send_request(struct conn *c) {
    size_t off = 0;
    while (off < request_len) {
        ssize_t n = write(c->fd, request + off, request_len - off);
        if (n < 0) {
            if (errno == EAGAIN) continue; /* tiny request: the buffer drains at once */
            return -1;
        }
        off += (size_t)n;
    }
    c->len = 0;
    c->st = HEADERS;
    c->started_ns = now_ns();
    return 0;
}

static void finish(struct conn *c) {
    if (c->status == 200 && nsamples < MAX_SAMPLES)
        samples[nsamples++] = (uint32_t)((now_ns() - c->started_ns) / 1000);
    else if (c->status != 200)
        errors++;
}

/* Drop the buffered bytes of the current body or chunk; 1 once it is all read. */
static int consume(struct conn *c) {
    size_t take = c->len < (size_t)c->remaining ? c->len : (size_t)c->remaining;
    body_bytes += take;
    memmove(c->buf, c->buf + take, c->len - take);
    c->len -= take;
    c->remaining -= (long)take;
    return c->remaining == 0;
}

/* Consume what is buffered; returns 1 when a response is complete, 0 for more, -1 bad. */
static int parse(struct conn *c) {
    for (;;) {
        if (c->st == HEADERS) {
            char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
            if (!end) return 0;
            size_t head = (size_t)(end - c->buf) + 4;
            c->status = atoi(c->buf + 9);
            c->remaining = 0;
            int chunked = 0;
            for (char *line = c->buf; line < end; line = memchr(line, '\n', (size_t)(end - line)) + 1) {
                if (!strncasecmp(line, "content-length:", 15)) c->remaining = atol(line + 15);
                if (!strncasecmp(line, "transfer-encoding:", 18) && memmem(line, (size_t)(end - line), "chunked", 7))
                    chunked = 1;
                if (!memchr(line, '\n', (size_t)(end - line))) break;
            }
            memmove(c->buf, c->buf + head, c->len - head);
            c->len -= head;
            c->st = chunked ? CHUNK_SIZE : BODY;
        } else if (c->st == BODY) {
            return consume(c);
        } else if (c->st == CHUNK_SIZE) {
            char *eol = memmem(c->buf, c->len, "\r\n", 2);
            if (!eol) return 0;
            c->remaining = strtol(c->buf, NULL, 16);
            size_t used = (size_t)(eol - c->buf) + 2;
            memmove(c->buf, c->buf + used, c->len - used);
            c->len -= used;
            c->st = c->remaining ? CHUNK_DATA : TRAILERS;
        } else if (c->st == CHUNK_DATA) {
            if (!consume(c)) return 0;
            c->st = CHUNK_CRLF;
        } else if (c->st == CHUNK_CRLF) {
            if (c->len < 2) return 0;
            memmove(c->buf, c->buf + 2, c->len - 2);
            c->len -= 2;
            c->st = CHUNK_SIZE;
        } else { /* TRAILERS: none are sent; the final CRLF ends the response */
            if (c->len < 2) return 0;
            memmove(c->buf, c->buf + 2, c->len - 2);
            c->len -= 2;
            return 1;
        }
    }
}

static int cmp(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    const char *method = "GET";
    long body = -1; /* no body, no Content-Length */
    int opt;
    while ((opt = getopt(argc, argv, "+m:b:")) != -1) {
        if (opt == 'm') method = optarg;
        else if (opt == 'b') body = atol(optarg);
        else return 2;
    }
    argv += optind - 1;
    argc -= optind - 1;
    if (argc < 5 || body > 4096) {
        fprintf(stderr, "usage: loadgen [-m METHOD] [-b BYTES<=4096] SOCKET PATH CONNECTIONS SECONDS [HEADER ...]\n");
        return 2;
    }
    sock_path = argv[1];
    int nconn = atoi(argv[3]);
    double seconds = atof(argv[4]);
    int off = snprintf(request, sizeof request, "%s %s HTTP/1.1\r\nHost: bench\r\n", method, argv[2]);
    for (int i = 5; i < argc; i++) off += snprintf(request + off, sizeof request - (size_t)off, "%s\r\n", argv[i]);
    if (body >= 0) off += snprintf(request + off, sizeof request - (size_t)off, "Content-Length: %ld\r\n", body);
    off += snprintf(request + off, sizeof request - (size_t)off, "\r\n");
    if (body > 0) {
        memset(request + off, 'x', (size_t)body);
        off += (int)body;
    }
    request_len = (size_t)off;
    samples = malloc(sizeof *samples * MAX_SAMPLES);
    struct conn *conns = calloc((size_t)nconn, sizeof *conns);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    for (int i = 0; i < nconn; i++) {
        conns[i].buf = malloc(BUF);
        conns[i].fd = connect_unix();
        if (conns[i].fd < 0) { perror("connect"); return 1; }
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &conns[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, conns[i].fd, &ev);
    }
    uint64_t start = now_ns(), stop = start + (uint64_t)(seconds * 1e9);
    for (int i = 0; i < nconn; i++)
        if (send_request(&conns[i]) < 0) { perror("write"); return 1; }
    struct epoll_event events[256];
    while (now_ns() < stop) {
        int n = epoll_wait(ep, events, 256, 100);
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            ssize_t got = read(c->fd, c->buf + c->len, BUF - c->len);
            if (got <= 0) {
                if (got < 0 && errno == EAGAIN) continue;
                errors++; /* the server closed: reconnect and go on */
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
                c->fd = connect_unix();
                if (c->fd < 0) { perror("reconnect"); return 1; }
                struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
                send_request(c);
                continue;
            }
            c->len += (size_t)got;
            int done = parse(c);
            if (done < 0) { errors++; continue; }
            if (done == 1) {
                finish(c);
                if (now_ns() < stop) send_request(c);
            }
        }
    }
    double elapsed = (double)(now_ns() - start) / 1e9;
    qsort(samples, (size_t)nsamples, sizeof *samples, cmp);
    uint32_t p50 = nsamples ? samples[nsamples / 2] : 0;
    uint32_t p99 = nsamples ? samples[(long)(nsamples * 0.99)] : 0;
    printf("{\"requests\": %ld, \"errors\": %ld, \"seconds\": %.3f, \"rps\": %.1f, "
           "\"p50_us\": %u, \"p99_us\": %u, \"bytes\": %lu}\n",
           nsamples, errors, elapsed, (double)nsamples / elapsed, p50, p99, (unsigned long)body_bytes);
    return 0;
}
