// Greedy decoding with llama.cpp from token ids (scripts/peer-llamacpp.sh; not part of CI):
// feeds the prompt's ids, then picks the argmax of the logits N times, printing the generated
// ids on one line. Ids, not text, so the GGUF's placeholder vocabulary never matters.
// Usage: peer_greedy MODEL.gguf THREADS N ID...
#include "llama.h"
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s MODEL.gguf THREADS N ID...\n", argv[0]);
        return 2;
    }
    int threads = atoi(argv[2]), n = atoi(argv[3]), n_prompt = argc - 4;
    llama_token *prompt = malloc(sizeof(llama_token) * n_prompt);
    for (int i = 0; i < n_prompt; i++) prompt[i] = atoi(argv[4 + i]);
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    struct llama_model *model = llama_model_load_from_file(argv[1], mp);
    if (!model) { fprintf(stderr, "cannot load %s\n", argv[1]); return 1; }
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = n_prompt + n + 8;
    cp.n_batch = n_prompt;
    cp.n_threads = threads;
    cp.n_threads_batch = threads;
    struct llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) { fprintf(stderr, "cannot make a context\n"); return 1; }
    int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    struct llama_batch batch = llama_batch_get_one(prompt, n_prompt);
    llama_token tok;
    for (int step = 0; step < n; step++) {
        if (llama_decode(ctx, batch) != 0) { fprintf(stderr, "decode failed at step %d\n", step); return 1; }
        const float *logits = llama_get_logits_ith(ctx, -1);
        int best = 0;
        for (int i = 1; i < n_vocab; i++) if (logits[i] > logits[best]) best = i;
        tok = best;
        printf(step ? " %d" : "%d", tok);
        batch = llama_batch_get_one(&tok, 1);
    }
    printf("\n");
    llama_free(ctx);
    llama_model_free(model);
    free(prompt);
    return 0;
}
