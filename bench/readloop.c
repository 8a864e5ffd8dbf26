/* The benchmark's timing client: tight loops of system calls, timed per operation.
 *
 *   readloop lat PATH N          open+read+close N times; prints "median_ns p99_ns mean_ns"
 *   readloop samples PATH N      the same, printing every operation's time in ns, one per line
 *   readloop thr PATH THREADS S  THREADS threads open+read+close for S seconds; prints "ops_per_s"
 *   readloop write PATH N        open(O_WRONLY|O_CREAT|O_TRUNC)+write 64 bytes+close N times; as lat
 *
 * Compiled by bench/run at run time (gcc -O2); never committed as a binary.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int cmp(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int one_read(const char *path) {
    char buf[4096];
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, sizeof buf);
    close(fd);
    return n < 0 ? -1 : 0;
}

static int one_write(const char *path, int i) {
    char buf[64];
    memset(buf, 'a' + (i % 26), sizeof buf);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) return -1;
    ssize_t n = write(fd, buf, sizeof buf);
    if (close(fd) < 0 || n != (ssize_t)sizeof buf) return -1;
    return 0;
}

static void report(uint64_t *t, long n) {
    uint64_t sum = 0;
    for (long i = 0; i < n; i++) sum += t[i];
    qsort(t, n, sizeof *t, cmp);
    long p99 = (long)(n * 0.99);
    if (p99 >= n) p99 = n - 1;
    printf("%llu %llu %llu\n", (unsigned long long)t[n / 2], (unsigned long long)t[p99],
           (unsigned long long)(sum / n));
}

struct worker {
    const char *path;
    volatile int *stop;
    long ops;
    int failed;
};

static void *run_worker(void *arg) {
    struct worker *w = arg;
    while (!*w->stop) {
        if (one_read(w->path) < 0) { w->failed = 1; return NULL; }
        w->ops++;
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: readloop lat|write PATH N | thr PATH THREADS SECONDS\n"); return 2; }
    const char *mode = argv[1], *path = argv[2];
    if (!strcmp(mode, "samples")) {
        long n = atol(argv[3]);
        for (long i = 0; i < n; i++) {
            uint64_t a = now_ns();
            if (one_read(path) < 0) { perror(path); return 1; }
            printf("%llu\n", (unsigned long long)(now_ns() - a));
        }
        return 0;
    }
    if (!strcmp(mode, "lat") || !strcmp(mode, "write")) {
        long n = atol(argv[3]);
        int writing = !strcmp(mode, "write");
        uint64_t *t = calloc(n, sizeof *t);
        for (long i = 0; i < n; i++) {
            uint64_t a = now_ns();
            if ((writing ? one_write(path, (int)i) : one_read(path)) < 0) { perror(path); return 1; }
            t[i] = now_ns() - a;
        }
        report(t, n);
        return 0;
    }
    if (!strcmp(mode, "thr") && argc >= 5) {
        int threads = atoi(argv[3]);
        double seconds = atof(argv[4]);
        volatile int stop = 0;
        struct worker *w = calloc(threads, sizeof *w);
        pthread_t *tid = calloc(threads, sizeof *tid);
        uint64_t start = now_ns();
        for (int i = 0; i < threads; i++) {
            w[i].path = path; w[i].stop = &stop;
            pthread_create(&tid[i], NULL, run_worker, &w[i]);
        }
        usleep((useconds_t)(seconds * 1e6));
        stop = 1;
        long ops = 0;
        for (int i = 0; i < threads; i++) {
            pthread_join(tid[i], NULL);
            if (w[i].failed) { perror(path); return 1; }
            ops += w[i].ops;
        }
        double elapsed = (now_ns() - start) / 1e9;
        printf("%.1f\n", ops / elapsed);
        return 0;
    }
    fprintf(stderr, "unknown mode %s\n", mode);
    return 2;
}
