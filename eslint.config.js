// @ts-check
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['node_modules/**', 'data/**', 'dist/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    files: ['**/*.ts'],
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      '@typescript-eslint/consistent-type-imports': 'error',
      'no-restricted-imports': 'off',
    },
  },
  // Dependencies point one way: shared <- payloads <- server | agent (DESIGN.md, STYLE.md 1).
  {
    files: ['shared/**/*.ts'],
    rules: { 'no-restricted-imports': ['error', { patterns: ['**/payloads/**', '**/server/**', '**/agent/**'] }] },
  },
  {
    files: ['payloads/**/*.ts'],
    rules: { 'no-restricted-imports': ['error', { patterns: ['**/server/**', '**/agent/**'] }] },
  },
  {
    files: ['server/**/*.ts'],
    rules: { 'no-restricted-imports': ['error', { patterns: ['**/agent/**'] }] },
  },
  {
    files: ['agent/**/*.ts'],
    // undici costs the agent ~10 MiB of RSS; agent/http-client.ts speaks HTTP on node:http.
    rules: { 'no-restricted-imports': ['error', { patterns: ['**/server/**'], paths: [{ name: 'undici', message: 'The agent uses agent/http-client.ts (node:http): undici costs ~10 MiB of RSS.' }] }] },
  },
  {
    files: ['bin/*.js'],
    languageOptions: { globals: { process: 'readonly', console: 'readonly', URL: 'readonly' } },
  },
);
