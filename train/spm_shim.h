/* A C interface to SentencePiece, built as its own shared library (libonebit_spm.so) and loaded with
   dlopen(RTLD_LOCAL | RTLD_DEEPBIND). Why: Debian's libsentencepiece embeds its own copy of
   protobuf-lite under the same symbol names as the libprotobuf that libtorch loads; linked into one
   program the two copies bind to each other's functions and the program crashes at start-up. */
#pragma once
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Every function returning int returns 0 on success, else writes a message to err[errlen]. Buffers
   returned through out-pointers are malloc'ed; release them with onebit_spm_free_buffer. */

/* next(ctx, &line, &len) returns 1 and the next training sentence, or 0 at the end. */
typedef int (*onebit_spm_next_line)(void* ctx, const char** line, size_t* len);

int onebit_spm_train(const char* const* keys, const char* const* values, int nargs, onebit_spm_next_line next,
                     void* ctx, char** model, size_t* model_len, char* err, size_t errlen);
void* onebit_spm_load(const char* model, size_t len, char* err, size_t errlen);
void onebit_spm_free(void* processor);
/* Ids of every non-blank line of text, the lines concatenated. */
int onebit_spm_encode_lines(void* processor, const char* text, size_t len, int32_t** ids, size_t* n, char* err,
                            size_t errlen);
int onebit_spm_decode(void* processor, const int32_t* ids, size_t n, char** text, size_t* len, char* err,
                      size_t errlen);
int onebit_spm_vocab_size(void* processor);
int onebit_spm_piece_to_id(void* processor, const char* piece);
void onebit_spm_free_buffer(void* p);

#ifdef __cplusplus
}
#endif
