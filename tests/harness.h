/* The C tests' one harness: CHECK, and a list of tests with a runner, in the manner of
 * libuv's test/test-list.h but small. A test file writes
 *
 *   TEST_IMPL(name) { ... CHECK(expr); ... }
 *   static const test_entry TESTS[] = { TEST_ENTRY(name), ... };
 *   int main(int argc, char **argv) { return run_tests(TESTS, TEST_COUNT(TESTS), argc, argv); }
 *
 * A failed CHECK prints file:line and the expression to stderr and fails the test;
 * the test goes on. The runner prints "ok NAME" or "FAIL NAME" per test (scripts/wine.sh
 * counts the "ok" lines), then "N tests, M failed", and exits 1 when any failed. Names
 * on the command line run only those tests. A test that cannot run somewhere says
 * "skip ...: why" itself and returns. */
#ifndef NPIPE_TEST_HARNESS_H
#define NPIPE_TEST_HARNESS_H

#include <stdio.h>
#include <string.h>

static int harness_test_failed;

#define CHECK(expr)                                                              \
  do {                                                                           \
    if (!(expr)) {                                                               \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #expr); \
      harness_test_failed = 1;                                                   \
    }                                                                            \
  } while (0)

typedef struct test_entry {
  const char *name;
  void (*fn)(void);
} test_entry;

#define TEST_IMPL(name) static void test_##name(void)
#define TEST_ENTRY(name) {#name, test_##name}
#define TEST_COUNT(list) (sizeof(list) / sizeof((list)[0]))

static int harness_wanted(const char *name, int argc, char **argv) {
  for (int i = 1; i < argc; i++)
    if (strcmp(argv[i], name) == 0) return 1;
  return argc < 2;
}

static int run_tests(const test_entry *tests, size_t n, int argc, char **argv) {
  int ran = 0, failed = 0;
  for (size_t i = 0; i < n; i++) {
    if (!harness_wanted(tests[i].name, argc, argv)) continue;
    harness_test_failed = 0;
    tests[i].fn();
    ran++;
    failed += harness_test_failed;
    printf("%s %s\n", harness_test_failed ? "FAIL" : "ok", tests[i].name);
    fflush(stdout);
  }
  printf("%d tests, %d failed\n", ran, failed);
  return failed || ran == 0 ? 1 : 0;
}

#endif
