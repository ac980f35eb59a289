/** Lambda entry for the normalize stage; the work is in ./core.ts. */
import { stageHandler } from '../shared/handler';
import { normalize } from './core';

export const handler = stageHandler('normalize', (ctx) => normalize(ctx));
