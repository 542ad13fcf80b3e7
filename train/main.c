/* main.c - the qtune command line. Placeholder entry until the CLI issue lands. */
#include <stdio.h>
int main(void) { return 0; }
