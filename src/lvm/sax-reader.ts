/**
 * The streaming machinery shared by the thin_delta and thin_dump parsers: strict sax fed in bounded
 * slices pulled from an async source, element handlers that queue items, and a generator that hands
 * the queued items out before the next slice is parsed, so memory stays bounded whatever the
 * document size. Subclasses handle the elements and say when a document is complete.
 */
import sax from 'sax';
import type { SAXParser, Tag } from 'sax';
import { FormatError, type FormatCode } from '../errors.js';

/** Input is fed to the XML parser in slices of at most this many characters. */
const SLICE_CHARS = 16 * 1024;

export abstract class SaxDocumentReader<T> {
  protected readonly parser: SAXParser;
  private readonly decoder = new TextDecoder('utf-8', { fatal: true });
  /** The current chunk of text and how much of it has been fed to the parser. */
  private text = '';
  private textPos = 0;
  private sourceDone = false;
  /** Set once the source has ended and the document was checked to be complete. */
  protected finished = false;
  /** The first error, rethrown by every later step. */
  private failure: { err: unknown } | undefined;
  /** Items parsed from the current slice, handed out before the next slice is fed. */
  protected queue: T[] = [];
  private queueHead = 0;
  maxQueued = 0;

  /**
   * @param tool names the producing tool in messages (`thin_delta output: ...`)
   * @param xmlCode the error code of malformed XML (e.g. DELTA_XML)
   */
  constructor(
    private readonly source: AsyncIterator<string | Uint8Array>,
    protected readonly file: string | undefined,
    private readonly tool: string,
    private readonly xmlCode: FormatCode,
  ) {
    // Strict mode: well-formedness errors are errors, names are case-sensitive.
    const p = sax.parser(true, { position: true });
    p.onerror = (e) => {
      // sax messages carry "\nLine: ..\nColumn: ..\nChar: .."; keep the first line.
      throw this.error(xmlCode, `not well-formed XML: ${e.message.split('\n')[0]}`, p.position);
    };
    p.onopentag = (tag) => this.openTag(tag as Tag);
    p.onclosetag = (name) => this.closeTag(name);
    p.ontext = (t) => {
      // Only indentation between elements; anything else is not the tool's output.
      if (/\S/.test(t)) throw this.error(xmlCode, `unexpected text ${JSON.stringify(t.trim().slice(0, 40))}`, p.position);
    };
    p.oncdata = () => {
      throw this.error(xmlCode, 'unexpected CDATA section', p.position);
    };
    p.ondoctype = () => {
      throw this.error(xmlCode, 'unexpected DOCTYPE', p.position);
    };
    // Comments and processing instructions (an <?xml ...?> declaration) carry nothing: ignored.
    this.parser = p;
  }

  protected abstract openTag(tag: Tag): void;
  protected abstract closeTag(name: string): void;
  /** The source has ended: throw unless the document is complete (a cut-short document is never taken as a shorter one). */
  protected abstract checkComplete(): void;

  protected error(code: FormatCode, message: string, offset?: number): FormatError {
    return new FormatError(code, `${this.tool} output: ${message}`, offset, this.file);
  }

  /** Offset of the '<' of the tag being handled (sax counts characters). */
  protected tagOffset(): number {
    return Math.max(0, this.parser.startTagPosition - 1);
  }

  /** The queued items, then the rest of the document's, as they are parsed. Single use. */
  async *items(): AsyncGenerator<T, void, undefined> {
    try {
      for (;;) {
        while (this.queueHead < this.queue.length) {
          const r = this.queue[this.queueHead]!;
          this.queueHead++;
          yield r;
        }
        this.queue = [];
        this.queueHead = 0;
        if (this.finished) return;
        await this.step();
      }
    } finally {
      // Early exit by the consumer (break / return / throw) or an error: release the source.
      if (!this.finished) await this.closeSource();
    }
  }

  async closeSource(): Promise<void> {
    if (this.sourceDone) return;
    this.sourceDone = true;
    try {
      await this.source.return?.();
    } catch {
      // The source's own clean-up failure is not ours to report.
    }
  }

  /** Feed the next slice of input to the parser, pulling a chunk from the source when needed. */
  protected async step(): Promise<void> {
    if (this.failure) throw this.failure.err;
    try {
      if (this.textPos >= this.text.length) {
        this.text = '';
        this.textPos = 0;
        if (this.sourceDone) return this.finish();
        const next = await this.source.next();
        if (next.done) {
          this.sourceDone = true;
          this.text = this.decoder.decode(); // flush: throws on a dangling partial UTF-8 sequence
          if (this.text === '') return this.finish();
        } else {
          this.text = typeof next.value === 'string' ? next.value : this.decoder.decode(next.value, { stream: true });
        }
      }
      const end = Math.min(this.text.length, this.textPos + SLICE_CHARS);
      this.parser.write(this.text.slice(this.textPos, end));
      this.textPos = end;
      this.maxQueued = Math.max(this.maxQueued, this.queue.length - this.queueHead);
    } catch (err) {
      const failure = (err as NodeJS.ErrnoException | undefined)?.code === 'ERR_ENCODING_INVALID_ENCODED_DATA'
        ? this.error(this.xmlCode, 'input is not valid UTF-8', this.parser.position)
        : err; // FormatErrors from the handlers, or the source's own error, unchanged
      this.failure = { err: failure };
      throw failure;
    }
  }

  private finish(): void {
    this.checkComplete();
    this.parser.close(); // reports anything left unbalanced after the root (sax's own checks)
    this.finished = true;
  }
}
