// Greedy decoding with llama2.c's run.c (its own forward pass, unchanged) from given prompt ids,
// for scripts/peer-llamacpp.sh: prints the DECODE_TOKENS greedy ids on stdout and, on stderr,
// one JSON line with the decode tokens/s (every token after the first, whose logits come from the
// last prompt position, as exitbench and llama-bench count decode).
//
// Build: cc -Ofast -march=native -I DIR_OF_RUN_C scripts/peer_runc.c -lm -o peer_runc
// Usage: peer_runc MODEL.bin DECODE_TOKENS PROMPT_ID...
#define main llama2c_run_main
#include "run.c"
#undef main

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char** argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: peer_runc MODEL.bin DECODE_TOKENS PROMPT_ID...\n");
        return 2;
    }
    Transformer t;
    build_transformer(&t, argv[1]);
    int steps = atoi(argv[2]);
    int np = argc - 3;
    if (steps < 2 || np + steps > t.config.seq_len) {
        fprintf(stderr, "peer_runc: %d prompt ids + %d tokens must fit the model's %d positions (and at least 2 tokens)\n", np, steps, t.config.seq_len);
        return 2;
    }
    int vocab = t.config.vocab_size;
    int token = atoi(argv[3]);
    double start = 0.0;
    for (int pos = 0; pos < np + steps - 1; pos++) {
        if (pos == np) start = now_s();
        float* logits = forward(&t, token, pos);
        if (pos < np - 1) {
            token = atoi(argv[4 + pos]);
        } else {
            token = sample_argmax(logits, vocab);
            printf("%d ", token);
        }
    }
    double took = now_s() - start;
    printf("\n");
    fprintf(stderr, "{\"decode_tokens\": %d, \"tok_s\": %.3f}\n", steps - 1, (steps - 1) / took);
    free_transformer(&t);
    return 0;
}
