/** User captions, cleaned for kohya. Kept apart from the image code so normalize ships without sharp. */

/** Longest caption kept, in characters: far more than the 75 tokens the text encoder reads by default. */
const MAX_CAPTION_CHARS = 1000;

/** A user caption made safe for kohya: one line of plain text, bounded length. */
export function cleanCaption(raw: Uint8Array): string {
  return (
    new TextDecoder('utf-8', { fatal: false })
      .decode(raw)
      // biome-ignore lint/suspicious/noControlCharactersInRegex: removing control characters is this regex's purpose
      .replace(/[\u0000-\u001f\u007f]+/g, ' ')
      .replace(/\s+/g, ' ')
      .trim()
      .slice(0, MAX_CAPTION_CHARS)
  );
}
