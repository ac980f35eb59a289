/** Placeholder so the stack synthesizes while the normalize stage is written; replaced in the next commits. */
export async function handler(): Promise<never> {
  throw new Error('normalize: not implemented yet');
}
