/**
 * Payload format v1: the fixed header and the limits every reader enforces.
 * Byte layout and the reasoning behind each limit: payloads/FORMAT.md.
 */
import { TandemError } from '../shared/errors.ts';

export const MAGIC = Buffer.from([0x89, 0x54, 0x41, 0x4e, 0x44, 0x45, 0x4d, 0x0a]); // "\x89TANDEM\n"
export const FORMAT_VERSION = 1;
export const HEADER_SIZE = 40;

export const BLOCK_SIZE = 4096;
/** Each operation writes at most this much: the grain of writes, output hashes and checkpoints. */
export const MAX_OPERATION_SIZE = 2 * 1024 * 1024;
/**
 * Compressed bytes of one blob: 8 MiB plus zstd's worst-case expansion of one
 * incompressible 2 MiB operation. A blob may decode to more than that (one frame
 * across many operations keeps the compressor's history); the decoder streams
 * it block by block, so only the window and one operation are ever held.
 */
export const MAX_BLOB_SIZE = 8 * 1024 * 1024 + 64 * 1024;
/** zstd window for blobs without a dictionary (log2): 8 MiB. */
export const MAX_WINDOW_LOG = 23;
/**
 * A PATCH blob decodes against a source dictionary. zstd-codec's fixed 16 MiB
 * WebAssembly heap holds a 3 MiB dictionary with a 4 MiB window but not a 2 MiB
 * dictionary with an 8 MiB one (measured), so dictionary blobs get both limits.
 */
export const MAX_DICT_SIZE = 2 * 1024 * 1024;
export const MAX_DICT_WINDOW_LOG = 22;
/** The reader refuses a manifest (stored or decoded) above this before reading a byte of it. */
export const MANIFEST_MAX_BYTES = 64 * 1024 * 1024;
export const SIGNATURE_BLOCK_MAX_BYTES = 256 * 1024;

/** Domain separation: a manifest signature can never be replayed as any other signed document. */
export const MANIFEST_SIGNATURE_DOMAIN = 'tandem-manifest-v1\n';

export interface PayloadHeader {
  formatVersion: number;
  /** Stored (zstd-compressed, signed) manifest bytes. */
  manifestLength: number;
  signatureBlockLength: number;
  /** The manifest's canonical JSON length once decompressed. */
  manifestRawLength: number;
}

export function encodeHeader(manifestLength: number, signatureBlockLength: number, manifestRawLength: number): Buffer {
  const header = Buffer.alloc(HEADER_SIZE);
  MAGIC.copy(header, 0);
  header.writeUInt32BE(FORMAT_VERSION, 8);
  header.writeUInt32BE(HEADER_SIZE, 12);
  header.writeBigUInt64BE(BigInt(manifestLength), 16);
  header.writeBigUInt64BE(BigInt(signatureBlockLength), 24);
  header.writeBigUInt64BE(BigInt(manifestRawLength), 32);
  return header;
}

export function decodeHeader(header: Uint8Array): PayloadHeader {
  const buf = Buffer.from(header.buffer, header.byteOffset, header.byteLength);
  if (buf.length < HEADER_SIZE) throw new TandemError('ERR_PAYLOAD_TRUNCATED', 'Payload ends inside its header.');
  if (!buf.subarray(0, 8).equals(MAGIC)) {
    throw new TandemError('ERR_PAYLOAD_MAGIC', 'Not a Tandem payload: the file does not start with the payload magic.');
  }
  const formatVersion = buf.readUInt32BE(8);
  if (formatVersion !== FORMAT_VERSION) {
    throw new TandemError('ERR_PAYLOAD_FORMAT_VERSION', `Payload format version ${formatVersion} is not supported (this build reads version ${FORMAT_VERSION}).`, {
      details: { formatVersion },
    });
  }
  const headerSize = buf.readUInt32BE(12);
  if (headerSize !== HEADER_SIZE) {
    throw new TandemError('ERR_PAYLOAD_HEADER', `Payload header size ${headerSize} is not ${HEADER_SIZE}.`);
  }
  const manifestLength = buf.readBigUInt64BE(16);
  const signatureBlockLength = buf.readBigUInt64BE(24);
  if (manifestLength === 0n || manifestLength > BigInt(MANIFEST_MAX_BYTES)) {
    throw new TandemError('ERR_MANIFEST_TOO_LARGE', `Manifest length ${manifestLength} is outside 1..${MANIFEST_MAX_BYTES} bytes.`, {
      details: { manifestLength: manifestLength.toString(), limit: MANIFEST_MAX_BYTES },
    });
  }
  if (signatureBlockLength === 0n || signatureBlockLength > BigInt(SIGNATURE_BLOCK_MAX_BYTES)) {
    throw new TandemError('ERR_PAYLOAD_HEADER', `Signature block length ${signatureBlockLength} is outside 1..${SIGNATURE_BLOCK_MAX_BYTES} bytes.`);
  }
  const manifestRawLength = buf.readBigUInt64BE(32);
  if (manifestRawLength === 0n || manifestRawLength > BigInt(MANIFEST_MAX_BYTES)) {
    throw new TandemError('ERR_MANIFEST_TOO_LARGE', `Decoded manifest length ${manifestRawLength} is outside 1..${MANIFEST_MAX_BYTES} bytes.`, {
      details: { manifestRawLength: manifestRawLength.toString(), limit: MANIFEST_MAX_BYTES },
    });
  }
  return {
    formatVersion,
    manifestLength: Number(manifestLength),
    signatureBlockLength: Number(signatureBlockLength),
    manifestRawLength: Number(manifestRawLength),
  };
}
