/* libFuzzer target: the incrementor's JSON batches (req_parse_json in
 * incrementor/parse.c), the whole input taken as a body:
 *   - it returns 0 or 400, and a 400 comes with a reason and leaves nothing
 *     to free (LeakSanitizer would say);
 *   - an accepted batch is a non-empty object with one item per member, each
 *     key valid (req_key_check) and pointing into the tree, each value the
 *     member's integer;
 *   - an accepted batch printed again by jansson parses to the same items.
 * Build and run: make fuzz. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "incrementor/parse.h"

#define CHECK(c) ((c) ? (void)0 : __builtin_trap())

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    json_object_seed(1); /* the same hash order in every run: reproducible inputs */
    return 0;
}

static void check_items(json_t *root, const req_item_t *items, size_t n)
{
    CHECK(json_is_object(root) && n >= 1 && n == json_object_size(root));
    for (size_t i = 0; i < n; i++) {
        const char *why;
        CHECK(items[i].key_len == strlen(items[i].key));
        CHECK(req_key_check(items[i].key, items[i].key_len, &why) == 0);
        json_t *v = json_object_get(root, items[i].key);
        CHECK(json_is_integer(v) && json_integer_value(v) == items[i].value);
        for (size_t k = 0; k < i; k++) /* distinct keys */
            CHECK(strcmp(items[k].key, items[i].key) != 0);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_t *root = NULL;
    req_item_t *items = NULL;
    size_t n = 0;
    char err[256];
    err[0] = '\0';
    int rc = req_parse_json((const char *)data, size, &root, &items, &n, err, sizeof err);
    CHECK(rc == 0 || rc == 400);
    if (rc != 0) {
        CHECK(root == NULL && items == NULL);
        CHECK(err[0] != '\0' && memchr(err, '\0', sizeof err) != NULL);
        return 0;
    }
    check_items(root, items, n);

    /* Printed and parsed again: the same batch. */
    char *text = json_dumps(root, JSON_COMPACT);
    CHECK(text != NULL);
    json_t *root2 = NULL;
    req_item_t *items2 = NULL;
    size_t n2 = 0;
    CHECK(req_parse_json(text, strlen(text), &root2, &items2, &n2, err, sizeof err) == 0);
    check_items(root2, items2, n2);
    CHECK(n2 == n);
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_object_get(root2, items[i].key);
        CHECK(v && json_integer_value(v) == items[i].value);
    }
    free(text);
    free(items2);
    json_decref(root2);
    free(items);
    json_decref(root);
    return 0;
}
