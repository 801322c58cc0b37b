/* libFuzzer target for pipe-name resolution: any name gives either an error or a
 * path that fits a Unix socket address, and never creates anything (create_dir=0). */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "np_platform.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char name[1024];
  if (size >= sizeof name) size = sizeof name - 1;
  memcpy(name, data, size);
  name[size] = '\0';
  char out[4096], err[512];
  err[0] = '\0';
  int rc = np_platform_resolve(name, NP_DIR_TRUST, out, sizeof out, err, sizeof err);
  if (rc == 0) {
    assert(strlen(out) > 0 && strlen(out) <= 107);
  } else {
    assert(rc < 0 && err[0] != '\0');
  }
  return 0;
}
