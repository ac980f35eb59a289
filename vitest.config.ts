import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    setupFiles: ['test/setup.ts'],
    // CDK synth and local state-machine runs are slow on the 2-core CI machine.
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // Forks isolate native modules (sharp) and process.env changes between files.
    pool: 'forks',
  },
});
