/** Placeholder so the stack synthesizes while the validate stage is written; replaced in the next commits. */
export async function handler(): Promise<never> {
  throw new Error('validate: not implemented yet');
}
