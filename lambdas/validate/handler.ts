/** Lambda entry for the validate stage; the work is in ./core.ts. */
import { stageHandler } from '../shared/handler';
import { validate } from './core';

export const handler = stageHandler('validate', (ctx) => validate(ctx));
