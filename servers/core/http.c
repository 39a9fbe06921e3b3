#include "http.h"

#include <errno.h>
#include <string.h>
#include <strings.h>

/* RFC 9110 tchar: the characters of a method or header name. */
static const unsigned char tchar[256] = {
    ['0' ... '9'] = 1, ['A' ... 'Z'] = 1, ['a' ... 'z'] = 1, ['!'] = 1, ['#'] = 1, ['$'] = 1,
    ['%'] = 1,         ['&'] = 1,         ['\''] = 1,        ['*'] = 1, ['+'] = 1, ['-'] = 1,
    ['.'] = 1,         ['^'] = 1,         ['_'] = 1,         ['`'] = 1, ['|'] = 1, ['~'] = 1,
};

/* RFC 9110 field-vchar, SP and HTAB: a header value's bytes (obs-text, 0x80
 * and up, included). A table, as tchar: every byte of every head goes
 * through one or the other. */
static const unsigned char fieldchar[256] = {
    ['\t'] = 1,
    [0x20 ... 0x7e] = 1,
    [0x80 ... 0xff] = 1,
};

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Length of the head (through its blank line), 0 when not complete yet. A
 * head ends at "\n\n" or "\n\r\n"; bare LF line ends are accepted. */
static size_t head_end(const char *buf, size_t len)
{
    const char *p = buf, *end = buf + len;
    while ((p = memchr(p, '\n', (size_t)(end - p))) != NULL) {
        p++;
        if (p < end && *p == '\n')
            return (size_t)(p + 1 - buf);
        if (p + 1 < end && p[0] == '\r' && p[1] == '\n')
            return (size_t)(p + 2 - buf);
        if (p + 1 >= end)
            return 0;
    }
    return 0;
}

/* Consume a line end at *p (CRLF or LF). Returns 0 or HTTP_BAD. */
static int eat_eol(const char **p)
{
    if (**p == '\r')
        (*p)++;
    if (**p != '\n')
        return HTTP_BAD;
    (*p)++;
    return 0;
}

/* "HTTP/d.d" at *p. */
static int parse_version(const char **p, int *major, int *minor)
{
    const char *s = *p;
    /* Byte by byte, so nothing past a short line is ever read. */
    for (int i = 0; i < 5; i++)
        if (s[i] != "HTTP/"[i])
            return HTTP_BAD;
    if (s[5] < '0' || s[5] > '9' || s[6] != '.' || s[7] < '0' || s[7] > '9')
        return HTTP_BAD;
    *major = s[5] - '0';
    *minor = s[7] - '0';
    *p = s + 8;
    return 0;
}

/* Header lines from *p up to and including the blank line. The head is known
 * to be complete, so every scan stops at a '\n' before the end. */
static int parse_headers(const char *p, http_header_t *h, size_t *num)
{
    size_t n = 0;
    for (;;) {
        if (*p == '\n' || (*p == '\r' && p[1] == '\n'))
            break;
        if (n == HTTP_MAX_HEADERS)
            return HTTP_TOO_LARGE;
        const char *name = p;
        while (tchar[(unsigned char)*p])
            p++;
        /* An empty name, white space before the colon or a folded line
         * (obsolete, and a request-smuggling vector) are all refused. */
        if (p == name || *p != ':')
            return HTTP_BAD;
        h[n].name = name;
        h[n].name_len = (size_t)(p - name);
        p++;
        while (*p == ' ' || *p == '\t')
            p++;
        const char *value = p, *last;
        while (fieldchar[(unsigned char)*p])
            p++;
        if (*p != '\r' && *p != '\n') /* a control character in the value */
            return HTTP_BAD;
        for (last = p; last > value && (last[-1] == ' ' || last[-1] == '\t'); last--)
            ;
        h[n].value = value;
        h[n].value_len = (size_t)(last - value);
        if (eat_eol(&p) < 0)
            return HTTP_BAD;
        n++;
    }
    *num = n;
    return 0;
}

int http_parse_request(const char *buf, size_t len, size_t max_head, http_request_t *req)
{
    size_t head = head_end(buf, len < max_head ? len : max_head);
    if (head == 0)
        return len >= max_head ? HTTP_TOO_LARGE : HTTP_PARTIAL;

    const char *p = buf;
    req->method = p;
    while (tchar[(unsigned char)*p])
        p++;
    req->method_len = (size_t)(p - req->method);
    if (req->method_len == 0 || *p++ != ' ')
        return HTTP_BAD;

    const char *target = p;
    while ((unsigned char)*p > 0x20 && (unsigned char)*p < 0x7f)
        p++;
    if (p == target || *p != ' ')
        return HTTP_BAD;
    const char *tend = p++;
    req->authority = NULL;
    req->authority_len = 0;
    if (*target != '/' && *target != '*') {
        /* absolute-form (http://host/path): keep the path part, and the
         * authority, which a proxy must send as Host (RFC 9112 3.2.2). */
        const char *s = memchr(target, ':', (size_t)(tend - target));
        if (!s || tend - s < 3 || s[1] != '/' || s[2] != '/')
            return HTTP_BAD;
        s += 3;
        req->authority = s;
        while (s < tend && *s != '/' && *s != '?')
            s++;
        req->authority_len = (size_t)(s - req->authority);
        target = s;
    }
    const char *q = memchr(target, '?', (size_t)(tend - target));
    req->path = target == tend ? "/" : target;
    req->path_len = target == tend ? 1 : (size_t)((q ? q : tend) - target);
    if (*req->path == '?') { /* "http://host?x" */
        req->path = "/";
        req->path_len = 1;
    }
    req->query = q ? q + 1 : NULL;
    req->query_len = q ? (size_t)(tend - q - 1) : 0;

    if (parse_version(&p, &req->major, &req->minor) < 0 || eat_eol(&p) < 0)
        return HTTP_BAD;
    int rc = parse_headers(p, req->headers, &req->num_headers);
    return rc < 0 ? rc : (int)head;
}

int http_parse_response(const char *buf, size_t len, size_t max_head, http_response_t *res)
{
    size_t head = head_end(buf, len < max_head ? len : max_head);
    if (head == 0)
        return len >= max_head ? HTTP_TOO_LARGE : HTTP_PARTIAL;
    const char *p = buf;
    if (parse_version(&p, &res->major, &res->minor) < 0 || *p++ != ' ')
        return HTTP_BAD;
    if (p[0] < '1' || p[0] > '5' || p[1] < '0' || p[1] > '9' || p[2] < '0' || p[2] > '9')
        return HTTP_BAD;
    res->status = (p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0');
    p += 3;
    /* The reason phrase is optional and ignored, but a proxy passes it on:
     * text only (RFC 9112 4: HTAB, SP, visible and obs-text bytes). */
    if (*p == ' ')
        for (p++; *p != '\r' && *p != '\n'; p++)
            if (((unsigned char)*p < 0x20 && *p != '\t') || *p == 0x7f)
                return HTTP_BAD;
    if (eat_eol(&p) < 0)
        return HTTP_BAD;
    int rc = parse_headers(p, res->headers, &res->num_headers);
    return rc < 0 ? rc : (int)head;
}

const http_header_t *http_find_header(const http_header_t *h, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (http_name_is(h[i].name, h[i].name_len, name))
            return &h[i];
    return NULL;
}

int http_has_token(const char *value, size_t len, const char *token)
{
    size_t tlen = strlen(token);
    const char *p = value, *end = value + len;
    while (p < end) {
        while (p < end && (*p == ' ' || *p == '\t' || *p == ','))
            p++;
        const char *s = p;
        while (p < end && *p != ',')
            p++;
        const char *e = p;
        while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
            e--;
        if ((size_t)(e - s) == tlen && strncasecmp(s, token, tlen) == 0)
            return 1;
    }
    return 0;
}

int http_body_framing(const http_header_t *h, size_t n, int64_t *content_length, int *chunked)
{
    int64_t cl = -1;
    int te = 0;
    for (size_t i = 0; i < n; i++) {
        if (http_name_is(h[i].name, h[i].name_len, "Content-Length")) {
            int64_t v = 0;
            if (h[i].value_len == 0 || h[i].value_len > 18)
                return 400;
            for (size_t k = 0; k < h[i].value_len; k++) {
                char c = h[i].value[k];
                if (c < '0' || c > '9')
                    return 400;
                v = v * 10 + (c - '0');
            }
            if (cl >= 0 && cl != v)
                return 400;
            cl = v;
        } else if (http_name_is(h[i].name, h[i].name_len, "Transfer-Encoding")) {
            /* Only "chunked" alone: anything else cannot be framed safely. */
            if (te || h[i].value_len != 7 || strncasecmp(h[i].value, "chunked", 7) != 0)
                return 501;
            te = 1;
        }
    }
    /* Both at once is how requests are smuggled past proxies (RFC 9112 6.1). */
    if (te && cl >= 0)
        return 400;
    *content_length = cl;
    *chunked = te;
    return 0;
}

/* RFC 3986 unreserved and sub-delims: the characters of a reg-name besides
 * pct-encoded, and (with ':') of an IP-literal between its brackets. A
 * table: every request's Host goes through it. */
static const unsigned char hostchar[256] = {
    ['0' ... '9'] = 1, ['A' ... 'Z'] = 1, ['a' ... 'z'] = 1, ['-'] = 1, ['.'] = 1,  ['_'] = 1,
    ['~'] = 1,         ['!'] = 1,         ['$'] = 1,         ['&'] = 1, ['\''] = 1, ['('] = 1,
    [')'] = 1,         ['*'] = 1,         ['+'] = 1,         [','] = 1, [';'] = 1,  ['='] = 1,
};

static int host_char(char c)
{
    return hostchar[(unsigned char)c];
}

/* Is v[0..len) a valid Host value: uri-host [ ":" port ], possibly empty? */
static int host_valid(const char *v, size_t len)
{
    size_t i = 0;
    if (len > 0 && v[0] == '[') {
        /* IP-literal: the characters of IPv6address and IPvFuture. */
        for (i = 1; i < len && v[i] != ']'; i++)
            if (!host_char(v[i]) && v[i] != ':')
                return 0;
        if (i == len || i == 1)
            return 0;
        i++;
    } else {
        while (i < len && v[i] != ':') {
            if (v[i] == '%') {
                if (i + 2 >= len || hexval(v[i + 1]) < 0 || hexval(v[i + 2]) < 0)
                    return 0;
                i += 3;
            } else if (host_char(v[i])) {
                i++;
            } else {
                return 0;
            }
        }
    }
    if (i == len)
        return 1;
    if (v[i++] != ':')
        return 0;
    for (; i < len; i++) /* port = *DIGIT */
        if (v[i] < '0' || v[i] > '9')
            return 0;
    return 1;
}

int http_check_host(const http_request_t *req)
{
    /* An absolute-form target names the host: it must be one (not empty,
     * no userinfo: RFC 9110 4.2.1 and 4.2.4). The Host field is still due. */
    if (req->authority &&
        (req->authority_len == 0 || !host_valid(req->authority, req->authority_len)))
        return 400;
    const http_header_t *host = NULL;
    for (size_t i = 0; i < req->num_headers; i++) {
        const http_header_t *h = &req->headers[i];
        if (http_name_is(h->name, h->name_len, "Host")) {
            if (host)
                return 400;
            host = h;
        }
    }
    if (!host)
        return req->major == 1 && req->minor >= 1 ? 400 : 0;
    return host_valid(host->value, host->value_len) ? 0 : 400;
}

int http_check_request(int parsed, const http_request_t *req, int64_t *content_length, int *chunked,
                       const char **why)
{
    int st;
    if (parsed < 0) {
        *why = parsed == HTTP_TOO_LARGE ? "header block too large\n" : "malformed request\n";
        return parsed == HTTP_TOO_LARGE ? 431 : 400;
    }
    if ((st = http_body_framing(req->headers, req->num_headers, content_length, chunked)) != 0) {
        *why = st == 501 ? "transfer coding not supported\n" : "bad body framing\n";
        return st;
    }
    if (req->major != 1) {
        *why = "only HTTP/1.x is served here\n";
        return 505;
    }
    if (http_check_host(req) != 0) { /* RFC 9112 3.2: a MUST, after the version is known */
        *why = "missing, repeated or invalid Host\n";
        return 400;
    }
    return 0;
}

int http_keep_alive(const http_request_t *req)
{
    const http_header_t *c = http_find_header(req->headers, req->num_headers, "Connection");
    if (req->major == 1 && req->minor >= 1)
        return !(c && http_has_token(c->value, c->value_len, "close"));
    return c && http_has_token(c->value, c->value_len, "keep-alive");
}

/* The decoder's states, one per position in the RFC 9112 section 7.1 grammar:
 *   chunk      = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
 *   chunk-size = 1*HEXDIG
 *   chunk-ext  = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
 *   chunk-ext-val = token / quoted-string
 *   trailer-section = *( field-line CRLF ), then CRLF
 * Anything off the grammar is HTTP_BAD: a decoder more lenient than the
 * proxy in front of it is how a body is smuggled (a size with junk after it
 * read as one size by one and another by the other). A bare CR is never a
 * line end (RFC 9112 section 2.2); a bare LF is, as everywhere in this parser. */
enum {
    CH_SIZE,         /* the first hex digit of a size */
    CH_SIZE_MORE,    /* more hex digits, or what follows the size */
    CH_EXT,          /* after the size or an extension: ';', BWS or the line end */
    CH_EXT_BWS,      /* white space there: only a ';' may follow it */
    CH_EXT_NAME0,    /* after ';': BWS, then the name's first character */
    CH_EXT_NAME,     /* the name: more of it, '=', ';', BWS or the line end */
    CH_EXT_NAME_BWS, /* white space after the name: '=' or ';' must follow */
    CH_EXT_VAL0,     /* after '=': BWS, then a token or a quoted string */
    CH_EXT_TOKEN,    /* a token value */
    CH_EXT_QUOTED,   /* inside a quoted string */
    CH_EXT_QPAIR,    /* after a backslash in a quoted string */
    CH_SIZE_LF,      /* a CR ended the size line: LF must follow */
    CH_DATA,
    CH_DATA_CR,
    CH_DATA_LF,
    CH_TRAILER_START, /* a trailer field's first character, or the final line end */
    CH_TRAILER_NAME,
    CH_TRAILER_VALUE,
    CH_TRAILER_LF,
    CH_END_LF, /* a CR began the final line end: LF must follow */
    CH_DONE
};

/* RFC 9110 qdtext and the second character of a quoted-pair (obs-text included). */
static int qdtext(unsigned char c)
{
    return c == '\t' || c == ' ' || c == 0x21 || (c >= 0x23 && c <= 0x5b) ||
           (c >= 0x5d && c <= 0x7e) || c >= 0x80;
}

static int qpair_char(unsigned char c)
{
    return c == '\t' || (c >= 0x20 && c != 0x7f);
}

/* The size line ended (its LF was taken): the chunk's data follows, or after
 * the last chunk (size 0) the trailer section. */
static void size_line_end(http_chunked_t *d)
{
    d->digits = 0;
    d->state = d->left ? CH_DATA : CH_TRAILER_START;
}

/* The chunked state machine, from buf[d->src] to buf[len): moving the data
 * down to buf[d->dst] (decoding) or leaving it in place (scanning). */
static int chunked_run(http_chunked_t *d, char *buf, size_t len, size_t max_body, int move)
{
    while (d->src < len) {
        unsigned char c = (unsigned char)buf[d->src];
        int blank = c == ' ' || c == '\t';
        int eol = c == '\r' || c == '\n';
        /* Trailers are skipped, but can't grow without bound. */
        if (d->state >= CH_TRAILER_START && d->state != CH_DONE && ++d->trailer > HTTP_MAX_HEAD)
            return HTTP_TOO_LARGE;
        switch (d->state) {
        case CH_SIZE:
        case CH_SIZE_MORE: {
            int v = hexval((char)c);
            if (v >= 0) {
                /* Leading zeros are valid (1*HEXDIG) and say nothing of the
                 * size: only significant digits count toward the cap, which
                 * keeps the value below 2^60. */
                if ((d->digits || v) && ++d->digits > 15)
                    return HTTP_TOO_LARGE;
                d->left = d->left * 16 + (uint64_t)v;
                d->state = CH_SIZE_MORE;
                d->src++;
                break;
            }
            if (d->state == CH_SIZE)
                return HTTP_BAD;
            if (d->dst + d->left > max_body)
                return HTTP_TOO_LARGE;
            d->state = CH_EXT; /* this character is looked at there */
            break;
        }
        case CH_EXT:
        case CH_EXT_BWS:
            if (c == ';')
                d->state = CH_EXT_NAME0;
            else if (blank)
                d->state = CH_EXT_BWS;
            else if (!eol || d->state == CH_EXT_BWS) /* BWS only before a ';' */
                return HTTP_BAD;
            else if (c == '\r')
                d->state = CH_SIZE_LF;
            else
                size_line_end(d);
            d->src++;
            break;
        case CH_EXT_NAME0:
            if (tchar[c])
                d->state = CH_EXT_NAME;
            else if (!blank)
                return HTTP_BAD;
            d->src++;
            break;
        case CH_EXT_NAME:
        case CH_EXT_NAME_BWS:
            if (c == '=')
                d->state = CH_EXT_VAL0;
            else if (c == ';')
                d->state = CH_EXT_NAME0;
            else if (blank)
                d->state = CH_EXT_NAME_BWS;
            else if (d->state == CH_EXT_NAME && c == '\r')
                d->state = CH_SIZE_LF;
            else if (d->state == CH_EXT_NAME && c == '\n')
                size_line_end(d);
            else if (d->state != CH_EXT_NAME || !tchar[c])
                return HTTP_BAD;
            d->src++;
            break;
        case CH_EXT_VAL0:
            if (c == '"')
                d->state = CH_EXT_QUOTED;
            else if (tchar[c])
                d->state = CH_EXT_TOKEN;
            else if (!blank)
                return HTTP_BAD;
            d->src++;
            break;
        case CH_EXT_TOKEN:
            if (!tchar[c]) {
                d->state = CH_EXT; /* the value ends: this character is looked at there */
                break;
            }
            d->src++;
            break;
        case CH_EXT_QUOTED:
            if (c == '"')
                d->state = CH_EXT;
            else if (c == '\\')
                d->state = CH_EXT_QPAIR;
            else if (!qdtext(c))
                return HTTP_BAD;
            d->src++;
            break;
        case CH_EXT_QPAIR:
            if (!qpair_char(c))
                return HTTP_BAD;
            d->state = CH_EXT_QUOTED;
            d->src++;
            break;
        case CH_SIZE_LF:
            if (c != '\n')
                return HTTP_BAD;
            size_line_end(d);
            d->src++;
            break;
        case CH_DATA: {
            size_t n = len - d->src;
            if (n > d->left)
                n = (size_t)d->left;
            if (move)
                memmove(buf + d->dst, buf + d->src, n);
            d->dst += n;
            d->src += n;
            d->left -= n;
            if (d->left == 0)
                d->state = CH_DATA_CR;
            break;
        }
        case CH_DATA_CR:
            d->src++;
            if (c == '\r')
                d->state = CH_DATA_LF;
            else if (c == '\n')
                d->state = CH_SIZE;
            else
                return HTTP_BAD;
            break;
        case CH_DATA_LF:
            d->src++;
            if (c != '\n')
                return HTTP_BAD;
            d->state = CH_SIZE;
            break;
        case CH_TRAILER_START: /* an empty line ends the body */
            d->src++;
            if (c == '\n') {
                d->state = CH_DONE;
                return 1;
            }
            if (c == '\r')
                d->state = CH_END_LF;
            else if (tchar[c])
                d->state = CH_TRAILER_NAME;
            else
                return HTTP_BAD;
            break;
        case CH_TRAILER_NAME: /* trailer fields are checked like header fields, then skipped */
            d->src++;
            if (c == ':')
                d->state = CH_TRAILER_VALUE;
            else if (!tchar[c])
                return HTTP_BAD;
            break;
        case CH_TRAILER_VALUE:
            d->src++;
            if (c == '\r')
                d->state = CH_TRAILER_LF;
            else if (c == '\n')
                d->state = CH_TRAILER_START;
            else if ((c < 0x20 && c != '\t') || c == 0x7f)
                return HTTP_BAD;
            break;
        case CH_TRAILER_LF:
        case CH_END_LF:
            d->src++;
            if (c != '\n')
                return HTTP_BAD;
            if (d->state == CH_TRAILER_LF) {
                d->state = CH_TRAILER_START;
                break;
            }
            d->state = CH_DONE;
            return 1;
        case CH_DONE:
            return 1;
        }
    }
    return d->state == CH_DONE;
}

int http_decode_chunked(http_chunked_t *d, char *buf, size_t len, size_t max_body)
{
    return chunked_run(d, buf, len, max_body, 1);
}

int http_scan_chunked(http_chunked_t *d, const char *p, size_t n, size_t *used)
{
    d->src = 0;
    /* Not written to: with move off, the machine only reads. */
    int rc = chunked_run(d, (char *)p, n, SIZE_MAX, 0);
    *used = d->src;
    return rc;
}

int http_query_get(const char *query, size_t len, const char *name, const char **value,
                   size_t *value_len)
{
    if (!query) /* before any arithmetic: NULL + 0 is undefined too */
        return -ENOENT;
    size_t nlen = strlen(name);
    const char *p = query, *end = query + len;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *e = amp ? amp : end;
        const char *eq = memchr(p, '=', (size_t)(e - p));
        const char *kend = eq ? eq : e;
        if ((size_t)(kend - p) == nlen && memcmp(p, name, nlen) == 0) {
            *value = eq ? eq + 1 : e;
            *value_len = eq ? (size_t)(e - eq - 1) : 0;
            return 0;
        }
        p = amp ? amp + 1 : end;
    }
    return -ENOENT;
}

ssize_t http_url_decode(const char *src, size_t len, char *dst, int plus)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        char c = src[i];
        if (c == '%') {
            int hi, lo;
            if (i + 2 >= len)
                return -EINVAL;
            hi = hexval(src[i + 1]);
            lo = hexval(src[i + 2]);
            if (hi < 0 || lo < 0)
                return -EINVAL;
            dst[o++] = (char)(hi * 16 + lo);
            i += 2;
        } else if (c == '+' && plus) {
            dst[o++] = ' ';
        } else {
            dst[o++] = c;
        }
    }
    return (ssize_t)o;
}

const char *http_reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 204:
        return "No Content";
    case 400:
        return "Bad Request";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 411:
        return "Length Required";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 415:
        return "Unsupported Media Type";
    case 421:
        return "Misdirected Request";
    case 422:
        return "Unprocessable Content";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 502:
        return "Bad Gateway";
    case 501:
        return "Not Implemented";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Unknown";
    }
}
