/** Placeholder so the stack synthesizes while the finalize stage is written; replaced in the next commits. */
export async function handler(): Promise<never> {
  throw new Error('finalize: not implemented yet');
}
