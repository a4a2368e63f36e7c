/* A TFLite external delegate that claims no ops: the smallest real shared library that the delegate loading path
 * (tflite_plugin_create_delegate / tflite_plugin_destroy_delegate) can load, used to test edgecls's delegate code.
 *
 * Options it understands:
 *   log=PATH          append every option it received, then "destroy" when destroyed, to PATH
 *   fail_create=1     return NULL from create (what libedgetpu does when it finds no Edge TPU)
 *   fail_prepare=1    fail in Prepare (what a delegate does when it cannot take the graph)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int TfLiteStatus; /* kTfLiteOk = 0, kTfLiteError = 1 */

typedef struct TfLiteDelegate {
  void* data_;
  TfLiteStatus (*Prepare)(void* context, struct TfLiteDelegate* delegate);
  void* CopyFromBufferHandle;
  void* CopyToBufferHandle;
  void* FreeBufferHandle;
  int64_t flags;
  void* opaque_delegate_builder;
} TfLiteDelegate;

typedef struct {
  char log[4096];
  int fail_prepare;
} NoopState;

static void note(const NoopState* state, const char* line) {
  if (!state->log[0]) return;
  FILE* f = fopen(state->log, "a");
  if (!f) return;
  fprintf(f, "%s\n", line);
  fclose(f);
}

static TfLiteStatus prepare(void* context, TfLiteDelegate* delegate) {
  (void)context;
  NoopState* state = (NoopState*)delegate->data_;
  note(state, "prepare");
  return state->fail_prepare ? 1 : 0;
}

TfLiteDelegate* tflite_plugin_create_delegate(char** keys, char** values, size_t num_options,
                                              void (*report_error)(const char*)) {
  NoopState* state = (NoopState*)calloc(1, sizeof(NoopState));
  TfLiteDelegate* delegate = (TfLiteDelegate*)calloc(1, sizeof(TfLiteDelegate));
  int fail_create = 0;
  char line[8192];
  if (!state || !delegate) return NULL;
  for (size_t i = 0; i < num_options; i++) {
    if (strcmp(keys[i], "log") == 0) strncpy(state->log, values[i], sizeof(state->log) - 1);
  }
  for (size_t i = 0; i < num_options; i++) {
    snprintf(line, sizeof(line), "%s=%s", keys[i], values[i]);
    note(state, line);
    if (strcmp(keys[i], "fail_create") == 0 && strcmp(values[i], "1") == 0) fail_create = 1;
    if (strcmp(keys[i], "fail_prepare") == 0 && strcmp(values[i], "1") == 0) state->fail_prepare = 1;
  }
  if (fail_create) {
    if (report_error) report_error("noop delegate: asked to fail");
    note(state, "create failed");
    free(state);
    free(delegate);
    return NULL;
  }
  delegate->data_ = state;
  delegate->Prepare = prepare;
  note(state, "created");
  return delegate;
}

void tflite_plugin_destroy_delegate(TfLiteDelegate* delegate) {
  if (!delegate) return;
  note((NoopState*)delegate->data_, "destroy");
  free(delegate->data_);
  free(delegate);
}
