/* Build options naming guest include directories (-I DIR): the host cannot see guest
 * files, so DIR becomes @AVA_INC<n>@ and the files under it travel with the call
 * (protocols/opencl_api.py, BuildOptions). */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ava_icd.h"

#define MAX_FILES 4096
#define MAX_BYTES (16u << 20)
#define MAX_FILE (1u << 20)
#define MAX_DEPTH 8

struct file_list {
    struct ava_enc files;      /* the encoded entries */
    uint64_t count;
    size_t bytes;
};

static void add_dir(struct file_list *fl, unsigned index, const char *root, const char *rel,
                    int depth)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s%s%s", root, *rel ? "/" : "", rel);
    DIR *d = opendir(path);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char sub[4096], full[8192];
        snprintf(sub, sizeof(sub), "%s%s%s", rel, *rel ? "/" : "", e->d_name);
        snprintf(full, sizeof(full), "%s/%s", root, sub);
        struct stat st;
        if (stat(full, &st) != 0)
            continue;
        if (S_ISDIR(st.st_mode)) {
            if (depth < MAX_DEPTH)
                add_dir(fl, index, root, sub, depth + 1);
            continue;
        }
        if (!S_ISREG(st.st_mode) || st.st_size > MAX_FILE || fl->count >= MAX_FILES ||
            fl->bytes + (size_t)st.st_size > MAX_BYTES)
            continue;
        FILE *f = fopen(full, "rb");
        if (!f)
            continue;
        char *data = malloc((size_t)st.st_size + 1);
        size_t n = data ? fread(data, 1, (size_t)st.st_size, f) : 0;
        fclose(f);
        if (data) {
            ava_enc_u64(&fl->files, index);
            ava_enc_blob(&fl->files, sub, strlen(sub));
            ava_enc_blob(&fl->files, data, n);
            fl->count++;
            fl->bytes += n;
            free(data);
        }
    }
    closedir(d);
}

void ava_enc_build_options(struct ava_enc *e, const char *options)
{
    if (!options) {
        ava_enc_u64(e, AVA_NULL_LEN);
        ava_enc_u64(e, 0);
        return;
    }
    struct file_list fl = {.count = 0};
    ava_enc_init(&fl.files);
    size_t len = strlen(options), cap = len + 64;
    char *out = malloc(cap);
    size_t o = 0;
    unsigned next_index = 0;
    const char *p = options;
    while (out && *p) {
        /* copy whitespace */
        if (*p == ' ' || *p == '\t' || *p == '\n') {
            out[o++] = *p++;
            continue;
        }
        const char *tok = p;
        while (*p && *p != ' ' && *p != '\t' && *p != '\n')
            p++;
        size_t tlen = (size_t)(p - tok);
        const char *dir = NULL;
        size_t dlen = 0;
        if (tlen > 2 && tok[0] == '-' && tok[1] == 'I') {
            dir = tok + 2;
            dlen = tlen - 2;
        } else if (tlen == 2 && tok[0] == '-' && tok[1] == 'I') {
            while (*p == ' ' || *p == '\t')
                p++;
            dir = p;
            while (*p && *p != ' ' && *p != '\t' && *p != '\n')
                p++;
            dlen = (size_t)(p - dir);
        }
        char dirbuf[4096];
        struct stat st;
        if (dir && dlen && dlen < sizeof(dirbuf) && next_index < 256) {
            memcpy(dirbuf, dir, dlen);
            dirbuf[dlen] = 0;
            if (stat(dirbuf, &st) == 0 && S_ISDIR(st.st_mode)) {
                char marker[32];
                int mlen = snprintf(marker, sizeof(marker), "-I @AVA_INC%u@", next_index);
                add_dir(&fl, next_index, dirbuf, "", 0);
                next_index++;
                if (o + (size_t)mlen + 1 > cap) {
                    cap = (o + (size_t)mlen + 1) * 2;
                    char *n = realloc(out, cap);
                    if (!n) { free(out); out = NULL; break; }
                    out = n;
                }
                memcpy(out + o, marker, (size_t)mlen);
                o += (size_t)mlen;
                continue;
            }
        }
        /* an ordinary token (or a directory we cannot read): as is */
        size_t span = (size_t)(p - tok);
        if (o + span + 1 > cap) {
            cap = (o + span + 1) * 2;
            char *n = realloc(out, cap);
            if (!n) { free(out); out = NULL; break; }
            out = n;
        }
        memcpy(out + o, tok, span);
        o += span;
    }
    if (!out || fl.files.oom) {
        e->oom = 1;
        free(out);
        ava_enc_free(&fl.files);
        return;
    }
    out[o] = 0;
    ava_enc_blob(e, out, o + 1);
    ava_enc_u64(e, fl.count);
    if (fl.files.len) {                   /* the entries, already padded to 8 */
        for (size_t i = 0; i < fl.files.len; i += 8) {
            uint64_t v;
            memcpy(&v, fl.files.buf + i, 8);
            ava_enc_u64(e, v);
        }
    }
    free(out);
    ava_enc_free(&fl.files);
}
