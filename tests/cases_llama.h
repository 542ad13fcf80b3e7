/* cases_llama.h - test cases of embedding, RMSNorm, RoPE and dropout (included by op_cases.h). */
#define QT_CASES_LLAMA
