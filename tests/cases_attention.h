/* cases_attention.h - test cases of attention, softmax and cross-entropy (op_cases.h). */
#define QT_CASES_ATTENTION
