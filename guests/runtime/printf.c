/*
 * Serial output on COM1 and a small printf, plus the mem/str functions the
 * compiler may call even in freestanding code.
 */
#include "runtime.h"

#define LSR 5
#define LSR_THRE 0x20

static void serial_raw(char c)
{
    /* Wait (boundedly) for room in the transmitter: a VMM without a UART
     * must not hang the guest. */
    for (int spins = 0; spins < 100000 && !(inb(COM1 + LSR) & LSR_THRE); spins++)
        pause();
    outb(COM1, (u8)c);
}

void putc(char c)
{
    if (c == '\n')
        serial_raw('\r');
    serial_raw(c);
}

void puts(const char *s)
{
    while (*s)
        putc(*s++);
}

/* Format one unsigned number; `neg` adds a minus sign. */
static void put_num(u64 v, unsigned base, int neg, int width, char pad)
{
    char buf[24];
    int n = 0;
    do {
        buf[n++] = "0123456789abcdef"[v % base];
        v /= base;
    } while (v);
    if (neg && pad == '0')
        putc('-');
    for (int w = n + neg; w < width; w++)
        putc(pad);
    if (neg && pad != '0')
        putc('-');
    while (n)
        putc(buf[--n]);
}

/* Supports %d %i %u %x %p %s %c %% with optional '0' flag, width and 'l'. */
int printf(const char *fmt, ...)
{
    __builtin_va_list ap;
    __builtin_va_start(ap, fmt);
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            putc(*fmt);
            continue;
        }
        fmt++;
        char pad = ' ';
        int width = 0, lng = 0;
        if (*fmt == '0') {
            pad = '0';
            fmt++;
        }
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt++ - '0');
        while (*fmt == 'l') {
            lng = 1;
            fmt++;
        }
        switch (*fmt) {
        case 'd':
        case 'i': {
            i64 v = lng ? __builtin_va_arg(ap, i64) : __builtin_va_arg(ap, int);
            put_num(v < 0 ? -(u64)v : (u64)v, 10, v < 0, width, pad);
            break;
        }
        case 'u':
            put_num(lng ? __builtin_va_arg(ap, u64) : __builtin_va_arg(ap, u32), 10, 0, width, pad);
            break;
        case 'x':
            put_num(lng ? __builtin_va_arg(ap, u64) : __builtin_va_arg(ap, u32), 16, 0, width, pad);
            break;
        case 'p':
            puts("0x");
            put_num((u64)__builtin_va_arg(ap, void *), 16, 0, width, pad);
            break;
        case 's': {
            const char *s = __builtin_va_arg(ap, const char *);
            if (!s)
                s = "(null)";
            for (int w = (int)strlen(s); w < width; w++)
                putc(' ');
            puts(s);
            break;
        }
        case 'c':
            putc((char)__builtin_va_arg(ap, int));
            break;
        case '%':
            putc('%');
            break;
        case '\0':
            fmt--; /* trailing '%': stop at the terminator */
            break;
        default:
            putc('%');
            putc(*fmt);
        }
    }
    __builtin_va_end(ap);
    return 0;
}

void *memset(void *d, int c, size_t n)
{
    u8 *p = d;
    while (n--)
        *p++ = (u8)c;
    return d;
}

void *memcpy(void *d, const void *s, size_t n)
{
    u8 *p = d;
    const u8 *q = s;
    while (n--)
        *p++ = *q++;
    return d;
}

void *memmove(void *d, const void *s, size_t n)
{
    u8 *p = d;
    const u8 *q = s;
    if (p < q)
        while (n--)
            *p++ = *q++;
    else
        while (n--)
            p[n] = q[n];
    return d;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const u8 *p = a, *q = b;
    for (; n; n--, p++, q++)
        if (*p != *q)
            return *p - *q;
    return 0;
}

size_t strlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

int strncmp(const char *a, const char *b, size_t n)
{
    for (; n; n--, a++, b++) {
        if (*a != *b)
            return (u8)*a - (u8)*b;
        if (!*a)
            return 0;
    }
    return 0;
}
