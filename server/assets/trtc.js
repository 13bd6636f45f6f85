/*!
 * rtcroom Web SDK: the TRTC Web SDK v4 API (TRTC.createClient / createStream, Client,
 * LocalStream, RemoteStream) on rtcroom's signalling protocol (docs/protocol.md).
 *
 * Plain ES2020, no dependencies, no build step. Served by an rtcroom server at
 * GET /sdk/trtc.js (defines globalThis.TRTC) and GET /sdk/trtc.mjs (the same file plus
 * `export default globalThis.TRTC;`). Documentation: docs/web-sdk.md.
 *
 * Behaviour mirrors the Rust engine (engine/src/config.rs, actors/src/lifecycle.rs,
 * actors/src/backoff.rs): the same parameter checks with the same code/extraCode, a 5 s
 * join timeout, heartbeats every 2 s, reconnection with TRTC's Fibonacci backoff (1, 2, 3,
 * 5, 8, 13, 13, ... s; 30 attempts), and a silent re-join that publishes and subscribes
 * everything again.
 */
(function () {
  'use strict';

  const G = globalThis;
  const VERSION = '4.15.22-rtcroom.0.1.0';
  const PROTOCOL_VERSION = 1;

  // Where this file was loaded from, read while it runs (null in modules and workers).
  const SCRIPT_SRC = (() => {
    try {
      const s = G.document && G.document.currentScript;
      return s && typeof s.src === 'string' ? s.src : null;
    } catch (_) {
      return null;
    }
  })();

  /* ------------------------------------------------------------------------------------
   * Timings (all overridable per client through the rtcroom-only `timings` option, which
   * tests use to run the same schedule faster). Values are TRTC's / the Rust engine's.
   * ---------------------------------------------------------------------------------- */
  const DEFAULTS = Object.freeze({
    joinTimeoutMs: 5000, // TRTC v4: 5 s after the join is sent ("join room timeout.")
    requestTimeoutMs: 5000, // leave, switch-role, publish/subscribe offers
    heartbeatIntervalMs: 2000, // TRTC v4: every 2 s after joining
    missedHeartbeats: 3, // silence for 3 intervals = connection lost
    reconnectAttempts: 30, // TRTC v4: Hk = 30
    backoffUnitMs: 1000, // Fibonacci steps 1, 2, 3, 5, 8, 13 (capped) of this unit
    mediaConnectTimeoutMs: 10000, // ICE + DTLS of one peer connection
    maxRebuilds: 3, // consecutive rebuilds of a failed peer connection
    rebuildDelayMs: 200, // n-th rebuild waits n times this
    disconnectedGraceMs: 4000, // a peer connection 'disconnected' this long counts as failed
    networkQualityIntervalMs: 2000, // TRTC: network-quality every 2 s
  });
  const BACKOFF_STEPS = [1, 2, 3, 5, 8, 13];

  const now = () => (G.performance && G.performance.now ? G.performance.now() : Date.now());
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  /* ------------------------------------------------------------------------------------
   * Logger
   * ---------------------------------------------------------------------------------- */
  const LogLevel = Object.freeze({ TRACE: 0, DEBUG: 1, INFO: 2, WARN: 3, ERROR: 4, NONE: 5 });
  let logLevel = LogLevel.INFO;
  const log = {
    debug: (...a) => logLevel <= LogLevel.DEBUG && console.debug('[TRTC]', ...a),
    info: (...a) => logLevel <= LogLevel.INFO && console.info('[TRTC]', ...a),
    warn: (...a) => logLevel <= LogLevel.WARN && console.warn('[TRTC]', ...a),
    error: (...a) => logLevel <= LogLevel.ERROR && console.error('[TRTC]', ...a),
  };
  const Logger = Object.freeze({
    LogLevel,
    setLogLevel(level) {
      if (Number.isInteger(level) && level >= 0 && level <= 5) logLevel = level;
    },
    enableUploadLog() {},
    disableUploadLog() {},
  });

  /* ------------------------------------------------------------------------------------
   * Errors: TRTC v4 ERROR_CODE and RtcError
   * ---------------------------------------------------------------------------------- */
  const ERROR_CODE = Object.freeze({
    INVALID_PARAMETER: 0x1000,
    INVALID_OPERATION: 0x1001,
    NOT_SUPPORTED: 0x1002,
    DEVICE_NOT_FOUND: 0x1003,
    INITIALIZE_FAILED: 0x1004,
    SIGNAL_CHANNEL_SETUP_FAILED: 0x4001,
    SIGNAL_CHANNEL_ERROR: 0x4002,
    ICE_TRANSPORT_ERROR: 0x4003,
    JOIN_ROOM_FAILED: 0x4004,
    CREATE_OFFER_FAILED: 0x4005,
    SIGNAL_CHANNEL_RECONNECTION_FAILED: 0x4006,
    UPLINK_RECONNECTION_FAILED: 0x4007,
    DOWNLINK_RECONNECTION_FAILED: 0x4008,
    REMOTE_STREAM_NOT_EXIST: 0x4010,
    CLIENT_BANNED: 0x4040,
    SERVER_TIMEOUT: 0x4041,
    SUBSCRIPTION_TIMEOUT: 0x4042,
    PLAY_NOT_ALLOWED: 0x4043,
    DEVICE_AUTO_RECOVER_FAILED: 0x4044,
    START_PUBLISH_CDN_FAILED: 0x4045,
    STOP_PUBLISH_CDN_FAILED: 0x4046,
    START_MIX_TRANSCODE_FAILED: 0x4047,
    STOP_MIX_TRANSCODE_FAILED: 0x4048,
    NOT_SUPPORTED_H264: 0x4049,
    SWITCH_ROLE_FAILED: 0x404a,
    API_CALL_TIMEOUT: 0x404b,
    UNKNOWN: 0xffff,
  });
  const CODE_NAME = {};
  for (const k of Object.keys(ERROR_CODE)) CODE_NAME[ERROR_CODE[k]] = k;
  const C = ERROR_CODE;

  // Extra codes, as protocol/src/error.rs `extra::` has them.
  const EXTRA = Object.freeze({
    PARAM_REQUIRED: 5001,
    PARAM_TYPE: 5002,
    PARAM_EMPTY: 5003,
    PARAM_RANGE: 5005,
    PARAM_MAX: 5008,
    STR_ROOM_ID_INVALID: 5012,
    ROOM_ID_RANGE: 5013,
    ROOM_ID_AS_STRING: 5016,
    EMPTY_BUFFER: 5017,
    BUFFER_OVERSIZE: 5018,
    ROOM_ID_TYPE_MISMATCH: 5019,
    NOT_ENTERED_ROOM: 5101,
    REPEATED_CALL: 5104,
    AUDIENCE_ROLE: 5107,
    PRIVILEGE_FLAG_ERROR: -100006,
    NO_PERMISSION_CREATE_ROOM: -102010,
    NO_PERMISSION_ENTER_ROOM: -102011,
    BAD_SCENE_OR_ROLE: -100011,
    UNDEFINED_ROLE: -102055,
  });

  class RtcError extends Error {
    /**
     * `new RtcError({code, extraCode?, message, originError?})` (TRTC v4's shape), or
     * `new RtcError(code, message, extraCode?)`.
     */
    constructor(a, message, extraCode) {
      const o = typeof a === 'object' && a !== null ? a : { code: a, message, extraCode };
      super(String(o.message || ''));
      this.name = 'RtcError';
      this.code = typeof o.code === 'number' ? o.code : C.UNKNOWN;
      this.extraCode = typeof o.extraCode === 'number' ? o.extraCode : undefined;
      if (o.originError !== undefined) this.originError = o.originError;
      if (o.functionName !== undefined) this.functionName = o.functionName;
    }
    getCode() {
      return this.code;
    }
    getExtraCode() {
      return this.extraCode;
    }
    toString() {
      const name = CODE_NAME[this.code] || 'UNKNOWN';
      const extra = this.extraCode === undefined ? '' : ` extraCode:${this.extraCode}`;
      return `RtcError: ${this.message} <${name} 0x${this.code.toString(16)}${extra}>`;
    }
  }
  const err = (code, message, extraCode) => new RtcError({ code, message, extraCode });
  const invalidParam = (extraCode, message) => err(C.INVALID_PARAMETER, message, extraCode);
  const invalidOp = (extraCode, message) => err(C.INVALID_OPERATION, message, extraCode);
  const fromWire = (e) =>
    err(typeof e.code === 'number' ? e.code : C.UNKNOWN, e.message || 'server error', e.extraCode);

  /* ------------------------------------------------------------------------------------
   * Parameter validation: the same rules, order, codes and extra codes as the Rust engine
   * (engine/src/config.rs ClientConfig::validate / JoinOptions::validate,
   * protocol/src/ids.rs UserId::new / RoomId::from_json / RoomId::string / Mode / Role).
   * ---------------------------------------------------------------------------------- */
  const utf8 = typeof TextEncoder === 'function' ? new TextEncoder() : null;
  const byteLen = (s) => (utf8 ? utf8.encode(s).length : unescape(encodeURIComponent(s)).length);
  const MAX_USER_ID_LEN = 32;
  const MAX_STR_ROOM_ID_LEN = 64;
  const MAX_NUMERIC_ROOM_ID = 4294967294;
  const USER_ID_RE = /^[A-Za-z0-9_-]*$/;
  const STR_ROOM_ID_RE = /^[A-Za-z0-9 !#$%&()+\-:;<=.>?@[\]^_{}|~,]*$/;
  const short = (v) => {
    let s;
    try {
      s = typeof v === 'string' ? JSON.stringify(v) : String(v);
    } catch (_) {
      s = typeof v;
    }
    return s.length > 42 ? s.slice(0, 40) + '…' : s;
  };
  const isNil = (v) => v === undefined || v === null;

  function parseMode(mode) {
    if (isNil(mode)) return 'rtc';
    if (mode === 'rtc' || mode === 'live') return mode;
    throw invalidParam(EXTRA.PARAM_TYPE, `mode must be 'rtc' or 'live', got ${short(mode)}`);
  }

  function parseRole(role) {
    if (role === 'anchor' || role === 'audience') return role;
    throw invalidParam(
      EXTRA.UNDEFINED_ROLE,
      `role must be 'anchor' or 'audience', got ${short(role)}`
    );
  }

  function checkUserId(userId) {
    if (isNil(userId)) throw invalidParam(EXTRA.PARAM_REQUIRED, 'userId is required');
    if (typeof userId !== 'string') {
      throw invalidParam(EXTRA.PARAM_TYPE, `userId must be a string, got ${typeof userId}`);
    }
    if (userId.length > 0 && /^ +$/.test(userId)) {
      throw invalidParam(EXTRA.PARAM_EMPTY, 'userId cannot be all spaces.');
    }
    if (userId.length === 0) throw invalidParam(EXTRA.PARAM_EMPTY, 'userId must not be empty');
    const n = byteLen(userId);
    if (n > MAX_USER_ID_LEN) {
      throw invalidParam(
        EXTRA.PARAM_MAX,
        `userId must be at most ${MAX_USER_ID_LEN} bytes, got ${n}`
      );
    }
    if (!USER_ID_RE.test(userId)) {
      const bad = [...userId].find((ch) => !USER_ID_RE.test(ch));
      throw invalidParam(undefined, `userId may only hold A-Z a-z 0-9 _ - but has ${short(bad)}`);
    }
    return userId;
  }

  function checkUrl(url) {
    if (typeof url !== 'string') {
      throw invalidParam(EXTRA.PARAM_TYPE, `serverUrl must be a ws:// or wss:// URL, got ${short(url)}`);
    }
    const ok =
      (url.startsWith('ws://') && url.length > 5) || (url.startsWith('wss://') && url.length > 6);
    if (!ok) {
      throw invalidParam(EXTRA.PARAM_TYPE, `serverUrl must be a ws:// or wss:// URL, got ${short(url)}`);
    }
    return url;
  }

  function defaultServerUrl() {
    // The server that handed out this file (GET /sdk/trtc.js) is an rtcroom server; a copy
    // of the file served from elsewhere, or a module import, falls back to the page.
    if (SCRIPT_SRC && /\/sdk\/trtc\.m?js(\?|#|$)/.test(SCRIPT_SRC)) {
      try {
        const u = new URL(SCRIPT_SRC);
        if (u.protocol === 'http:' || u.protocol === 'https:') {
          return `${u.protocol === 'https:' ? 'wss' : 'ws'}://${u.host}/ws`;
        }
      } catch (_) {
        /* fall through */
      }
    }
    const loc = G.location;
    if (loc && loc.host && (loc.protocol === 'http:' || loc.protocol === 'https:')) {
      return `${loc.protocol === 'https:' ? 'wss' : 'ws'}://${loc.host}/ws`;
    }
    return 'ws://127.0.0.1:7900/ws';
  }

  function validateClientConfig(config) {
    if (isNil(config) || typeof config !== 'object') {
      throw invalidParam(EXTRA.PARAM_REQUIRED, 'createClient() needs a config object');
    }
    const mode = parseMode(config.mode);
    const app = config.sdkAppId;
    if (isNil(app) || app === 0) throw invalidParam(EXTRA.PARAM_REQUIRED, 'sdkAppId is required');
    if (typeof app !== 'number') {
      throw invalidParam(EXTRA.PARAM_TYPE, `sdkAppId must be a number, got ${typeof app}`);
    }
    if (!Number.isInteger(app) || app < 1 || app > 4294967295) {
      throw invalidParam(
        EXTRA.PARAM_RANGE,
        `sdkAppId must be an integer in [1, 4294967295], got ${short(app)}`
      );
    }
    const userId = checkUserId(config.userId);
    const sig = config.userSig;
    if (isNil(sig)) throw invalidParam(EXTRA.PARAM_REQUIRED, 'userSig is required');
    if (typeof sig !== 'string') {
      throw invalidParam(EXTRA.PARAM_TYPE, `userSig must be a string, got ${typeof sig}`);
    }
    if (sig.length === 0) throw invalidParam(EXTRA.PARAM_EMPTY, 'userSig must not be empty');
    const serverUrl = isNil(config.serverUrl) ? defaultServerUrl() : checkUrl(config.serverUrl);
    const bool = (name, dflt) => {
      const v = config[name];
      if (isNil(v)) return dflt;
      if (typeof v !== 'boolean') {
        throw invalidParam(EXTRA.PARAM_TYPE, `${name} must be a boolean, got ${short(v)}`);
      }
      return v;
    };
    const useStringRoomId = bool('useStringRoomId', false);
    const autoSubscribe = bool('autoSubscribe', true);
    const enableSEI = bool('enableSEI', false);
    let videoCodec = 'h264';
    if (!isNil(config.videoCodec)) {
      const v = typeof config.videoCodec === 'string' ? config.videoCodec.toLowerCase() : '';
      if (v !== 'h264' && v !== 'vp8') {
        throw invalidParam(
          EXTRA.PARAM_TYPE,
          `videoCodec must be 'h264' or 'vp8', got ${short(config.videoCodec)}`
        );
      }
      videoCodec = v;
    }
    const timings = Object.assign({}, DEFAULTS);
    if (!isNil(config.timings)) {
      if (typeof config.timings !== 'object') {
        throw invalidParam(EXTRA.PARAM_TYPE, 'timings must be an object');
      }
      for (const k of Object.keys(config.timings)) {
        const v = config.timings[k];
        if (!(k in DEFAULTS)) throw invalidParam(EXTRA.PARAM_TYPE, `unknown timing ${short(k)}`);
        const zeroOk = k === 'reconnectAttempts' || k === 'maxRebuilds';
        if (typeof v !== 'number' || !(v > 0 || (zeroOk && v === 0))) {
          throw invalidParam(EXTRA.PARAM_RANGE, `timings.${k} must be > 0`);
        }
        timings[k] = v;
      }
    }
    return {
      mode,
      sdkAppId: app,
      userId,
      userSig: sig,
      serverUrl,
      useStringRoomId,
      autoSubscribe,
      videoCodec,
      enableSEI,
      timings,
    };
  }

  /* ------------------------------------------------------------------------------------
   * SEI messages in H.264 (sendSEIMessage / 'sei-message'), through encoded transforms
   * ---------------------------------------------------------------------------------- */
  const SEI_TYPES = [5, 243];
  // x264's own user_data_unregistered (its version banner): not an application message.
  const X264_UUID = [0xdc, 0x45, 0xe9, 0xbd, 0xe6, 0xd9, 0x48, 0xb7, 0x96, 0x2c, 0xd8, 0x20, 0xd9, 0x23, 0xee, 0xef];
  /** Simulcast sending (sendEncodings with rids): every browser with transceivers. */
  const isSmallStreamSupported = () => !!(G.RTCPeerConnection && G.RTCRtpTransceiver && G.RTCRtpSender);

  const seiSupported = () =>
    !!(G.RTCRtpSender && G.RTCRtpSender.prototype && G.RTCRtpSender.prototype.createEncodedStreams);

  /** One SEI NAL unit (header included, no start code) carrying `messages`. */
  function seiNal(messages) {
    const rbsp = [];
    const ff = (v) => {
      while (v >= 255) {
        rbsp.push(255);
        v -= 255;
      }
      rbsp.push(v);
    };
    for (const m of messages) {
      ff(m.type);
      ff(m.data.length);
      for (const b of m.data) rbsp.push(b);
    }
    rbsp.push(0x80);
    const out = [0x06];
    let zeros = 0;
    for (const b of rbsp) {
      if (zeros >= 2 && b <= 3) {
        out.push(3);
        zeros = 0;
      }
      out.push(b);
      zeros = b === 0 ? zeros + 1 : 0;
    }
    return out;
  }

  /** The NAL units of an Annex B buffer: [{start (of its start code), body, end}]. */
  function annexbUnits(d) {
    const codes = [];
    for (let i = 0; i + 3 <= d.length; ) {
      if (d[i] === 0 && d[i + 1] === 0 && d[i + 2] === 1) {
        codes.push({ start: i > 0 && d[i - 1] === 0 ? i - 1 : i, body: i + 3 });
        i += 3;
      } else i += 1;
    }
    return codes.map((c, k) => ({ start: c.start, body: c.body, end: k + 1 < codes.length ? codes[k + 1].start : d.length }));
  }

  /** An Annex B access unit with `nal` in front of its first slice. */
  function insertSei(data, nal) {
    const d = new Uint8Array(data);
    const slice = annexbUnits(d).find((u) => u.body < u.end && [1, 2, 3, 4, 5].includes(d[u.body] & 0x1f));
    const at = slice ? slice.start : d.length;
    const out = new Uint8Array(d.length + nal.length + 4);
    out.set(d.subarray(0, at), 0);
    out.set([0, 0, 0, 1], at);
    out.set(nal, at + 4);
    out.set(d.subarray(at), at + 4 + nal.length);
    return out.buffer;
  }

  /** The application SEI messages (types 5 and 243) of an Annex B access unit. */
  function parseSei(data) {
    const d = new Uint8Array(data);
    const found = [];
    for (const u of annexbUnits(d)) {
      if (u.body >= u.end || (d[u.body] & 0x1f) !== 6) continue;
      const rbsp = [];
      let zeros = 0;
      for (let i = u.body + 1; i < u.end; i++) {
        const b = d[i];
        if (zeros >= 2 && b === 3) {
          zeros = 0;
          continue;
        }
        rbsp.push(b);
        zeros = b === 0 ? zeros + 1 : 0;
      }
      let i = 0;
      const ff = () => {
        let v = 0;
        while (i < rbsp.length) {
          const b = rbsp[i++];
          v += b;
          if (b !== 255) return v;
        }
        return -1;
      };
      while (i < rbsp.length && rbsp[i] !== 0x80) {
        const type = ff();
        const size = ff();
        if (type < 0 || size < 0 || i + size > rbsp.length) break;
        const payload = rbsp.slice(i, i + size);
        i += size;
        const app = type === 243 || (type === 5 && size >= 16 && !X264_UUID.every((b, k) => payload[k] === b));
        if (app) found.push({ type, data: new Uint8Array(payload).buffer });
      }
    }
    return found;
  }

  /** The room id as RoomId::from_json takes it, plus its wire text. */
  function parseRoomId(roomId, useStringRoomId) {
    if (isNil(roomId)) throw invalidParam(EXTRA.PARAM_REQUIRED, 'roomId is required');
    if (!useStringRoomId) {
      if (typeof roomId === 'number') {
        if (Number.isInteger(roomId) && roomId >= 1 && roomId <= MAX_NUMERIC_ROOM_ID) {
          return { text: String(roomId), value: roomId, isString: false };
        }
        throw invalidParam(
          EXTRA.ROOM_ID_RANGE,
          `roomId must be an integer in [1, ${MAX_NUMERIC_ROOM_ID}], got ${short(roomId)}`
        );
      }
      if (typeof roomId === 'string') {
        throw invalidParam(
          EXTRA.ROOM_ID_AS_STRING,
          'roomId is a string but useStringRoomId is off; pass a number or set useStringRoomId'
        );
      }
      throw invalidParam(EXTRA.PARAM_TYPE, 'roomId must be a number or a string');
    }
    if (typeof roomId === 'number') {
      throw invalidParam(
        EXTRA.ROOM_ID_TYPE_MISMATCH,
        'roomId is a number but useStringRoomId is on; pass a string'
      );
    }
    if (typeof roomId !== 'string') {
      throw invalidParam(EXTRA.PARAM_TYPE, 'roomId must be a number or a string');
    }
    if (roomId.length === 0) {
      throw invalidParam(EXTRA.STR_ROOM_ID_INVALID, 'roomId (string) must not be empty');
    }
    const n = byteLen(roomId);
    if (n > MAX_STR_ROOM_ID_LEN) {
      throw invalidParam(
        EXTRA.STR_ROOM_ID_INVALID,
        `roomId (string) must be at most ${MAX_STR_ROOM_ID_LEN} bytes, got ${n}`
      );
    }
    if (!STR_ROOM_ID_RE.test(roomId)) {
      const bad = [...roomId].find((ch) => !STR_ROOM_ID_RE.test(ch));
      throw invalidParam(
        EXTRA.STR_ROOM_ID_INVALID,
        `roomId (string) may only hold A-Z a-z 0-9, space and !#$%&()+-:;<=.>?@[]^_{}|~, but has ${short(bad)}`
      );
    }
    return { text: roomId, value: roomId, isString: true };
  }

  function validateJoinOptions(options, useStringRoomId) {
    const o = isNil(options) || typeof options !== 'object' ? {} : options;
    const room = parseRoomId(o.roomId, useStringRoomId);
    // TRTC v4's default role is anchor (the Rust engine's too); ignored in rtc mode.
    const role = isNil(o.role) ? 'anchor' : parseRole(o.role);
    let privateMapKey;
    if (!isNil(o.privateMapKey)) {
      if (typeof o.privateMapKey !== 'string') {
        throw invalidParam(EXTRA.PARAM_TYPE, 'privateMapKey must be a string');
      }
      if (o.privateMapKey.length === 0) {
        throw invalidParam(EXTRA.PARAM_EMPTY, 'privateMapKey must not be empty when given');
      }
      privateMapKey = o.privateMapKey;
    }
    return { room, role, privateMapKey };
  }

  /* ------------------------------------------------------------------------------------
   * Events
   * ---------------------------------------------------------------------------------- */
  class Emitter {
    constructor() {
      this._handlers = new Map();
    }
    on(event, handler, context) {
      if (typeof event !== 'string' || typeof handler !== 'function') return;
      if (!this._handlers.has(event)) this._handlers.set(event, []);
      this._handlers.get(event).push({ handler, context, once: false });
    }
    once(event, handler, context) {
      this.on(event, handler, context);
      const list = this._handlers.get(event);
      if (list && list.length) list[list.length - 1].once = true;
    }
    off(event, handler, context) {
      if (event === '*') {
        this._handlers.clear();
        return;
      }
      const list = this._handlers.get(event);
      if (!list) return;
      if (!handler) {
        this._handlers.delete(event);
        return;
      }
      const keep = list.filter(
        (h) => !(h.handler === handler && (context === undefined || h.context === context))
      );
      if (keep.length) this._handlers.set(event, keep);
      else this._handlers.delete(event);
    }
    _emit(event, payload) {
      const list = this._handlers.get(event);
      if (!list || !list.length) return;
      for (const h of list.slice()) {
        if (h.once) this.off(event, h.handler, h.context);
        try {
          h.handler.call(h.context, payload);
        } catch (e) {
          log.error(`a '${event}' handler threw:`, e);
        }
      }
    }
  }

  /* ------------------------------------------------------------------------------------
   * Signalling: one WebSocket, request ids, replies, events, heartbeats
   * ---------------------------------------------------------------------------------- */
  class SignalFailure extends Error {
    /** kind: 'connect' | 'timeout' | 'rejected' | 'lost'; rtc: the RtcError for timeout/rejected. */
    constructor(kind, rtc, message) {
      super(message || (rtc && rtc.message) || kind);
      this.kind = kind;
      this.rtc = rtc;
    }
    /** The error a failed join ends with (SignalError::into_join_error). */
    joinError() {
      if (this.rtc) return this.rtc;
      if (this.kind === 'connect') {
        return err(C.JOIN_ROOM_FAILED, `cannot reach the signalling server: ${this.message}`);
      }
      return err(C.JOIN_ROOM_FAILED, 'the signalling connection was lost during the join');
    }
    /** The error another request ends with (SignalError::into_rtc_error). */
    requestError(lostCode) {
      if (this.rtc) return this.rtc;
      return err(lostCode, this.kind === 'lost' ? 'the signalling connection was lost' : this.message);
    }
    /** SignalError::is_retryable + error::is_permanent_refusal. */
    retryable() {
      if (this.kind !== 'rejected') return true;
      const e = this.rtc;
      if (e.code === C.SIGNAL_CHANNEL_SETUP_FAILED || e.code === C.INVALID_PARAMETER) return false;
      if (e.code === C.JOIN_ROOM_FAILED) {
        return ![
          EXTRA.PRIVILEGE_FLAG_ERROR,
          EXTRA.NO_PERMISSION_CREATE_ROOM,
          EXTRA.NO_PERMISSION_ENTER_ROOM,
          EXTRA.BAD_SCENE_OR_ROLE,
        ].includes(e.extraCode);
      }
      return true;
    }
  }

  class Signal {
    constructor(url, handlers) {
      this.url = url;
      this.h = handlers; // {onEvent(ev), onLost(reason)}
      this.ws = null;
      this.nextId = 1;
      this.pending = new Map();
      this.closed = false;
      this.lastHeard = now();
      this.hbTimer = null;
    }

    /** Open the socket; rejects with a SignalFailure ('timeout' with `timeoutError`, or 'connect'). */
    connect(timeoutMs, timeoutError) {
      return new Promise((resolve, reject) => {
        let settled = false;
        const fail = (why, timedOut) => {
          if (settled) return;
          settled = true;
          clearTimeout(timer);
          this.close();
          reject(timedOut ? new SignalFailure('timeout', timeoutError) : new SignalFailure('connect', null, why));
        };
        const timer = setTimeout(() => fail('timeout', true), Math.max(1, timeoutMs));
        let ws;
        try {
          ws = new WebSocket(this.url);
        } catch (e) {
          fail(String((e && e.message) || e));
          return;
        }
        this.ws = ws;
        ws.onopen = () => {
          if (settled) return;
          settled = true;
          clearTimeout(timer);
          this.lastHeard = now();
          resolve();
        };
        ws.onerror = () => {
          if (!settled) fail(`WebSocket error connecting to ${this.url}`);
        };
        ws.onclose = (ev) => {
          if (!settled) {
            fail(`WebSocket to ${this.url} closed (${ev.code})`);
            return;
          }
          this._lost(`closed by the server (${ev.code}${ev.reason ? ' ' + ev.reason : ''})`);
        };
        ws.onmessage = (ev) => this._frame(ev.data);
      });
    }

    _frame(data) {
      if (this.closed) return;
      this.lastHeard = now();
      if (typeof data !== 'string') return;
      let f;
      try {
        f = JSON.parse(data);
      } catch (_) {
        log.warn('unparsable frame from the server');
        return;
      }
      if (!f || typeof f !== 'object') return;
      if (f.type === 'reply') {
        const p = this.pending.get(f.id);
        if (!p) {
          if (f.error) log.warn('server error', f.id, f.error);
          return;
        }
        this.pending.delete(f.id);
        clearTimeout(p.timer);
        if (f.error) p.reject(new SignalFailure('rejected', fromWire(f.error)));
        else p.resolve(f.data);
      } else if (f.type === 'event') {
        this.h.onEvent(f);
      } else if (f.type === 'events' && Array.isArray(f.events)) {
        // Exactly as the same events one by one, in order.
        for (const e of f.events) {
          if (this.closed) return;
          this.h.onEvent(e);
        }
      }
    }

    /** Send a request; resolves with the reply's data, rejects with a SignalFailure. */
    request(msg, timeoutMs, timeoutError) {
      if (this.closed || !this.ws || this.ws.readyState !== 1) {
        return Promise.reject(new SignalFailure('lost'));
      }
      const id = this.nextId++;
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          this.pending.delete(id);
          reject(new SignalFailure('timeout', timeoutError || err(C.API_CALL_TIMEOUT, 'request timeout')));
        }, Math.max(1, timeoutMs));
        this.pending.set(id, { resolve, reject, timer });
        try {
          this.ws.send(JSON.stringify({ v: PROTOCOL_VERSION, id, msg }));
        } catch (e) {
          clearTimeout(timer);
          this.pending.delete(id);
          reject(new SignalFailure('lost'));
        }
      });
    }

    /** Send without waiting for the reply (leave on page hide). */
    fire(msg) {
      if (this.closed || !this.ws || this.ws.readyState !== 1) return;
      try {
        this.ws.send(JSON.stringify({ v: PROTOCOL_VERSION, id: this.nextId++, msg }));
      } catch (_) {
        /* best effort */
      }
    }

    /** Heartbeat every `intervalMs`; `missed` silent intervals mean the connection is dead. */
    startHeartbeat(intervalMs, missed) {
      clearInterval(this.hbTimer);
      const deadAfter = intervalMs * Math.max(1, missed);
      let nextSend = now() + intervalMs;
      const tick = () => {
        if (this.closed) return;
        const t = now();
        if (t - this.lastHeard >= deadAfter) {
          this._lost(`nothing heard from the server for ${Math.round(t - this.lastHeard)} ms`);
          return;
        }
        if (t >= nextSend) {
          while (nextSend <= t) nextSend += intervalMs;
          this.request({ type: 'heartbeat' }, deadAfter).catch(() => {});
        }
      };
      this.hbTimer = setInterval(tick, Math.max(50, Math.min(intervalMs, 1000) / 2));
    }

    _lost(reason) {
      if (this.closed) return;
      this.close();
      this.h.onLost(reason);
    }

    close(code) {
      if (this.closed) return;
      this.closed = true;
      clearInterval(this.hbTimer);
      for (const [, p] of this.pending) {
        clearTimeout(p.timer);
        p.reject(new SignalFailure('lost'));
      }
      this.pending.clear();
      const ws = this.ws;
      if (ws) {
        ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
        try {
          if (ws.readyState === 0 || ws.readyState === 1) ws.close(code || 1000);
        } catch (_) {
          /* ignore */
        }
      }
    }
  }

  /* ------------------------------------------------------------------------------------
   * Codecs and SDP
   * ---------------------------------------------------------------------------------- */
  function h264Info(fmtp) {
    const f = fmtp || '';
    const m = /profile-level-id=([0-9a-fA-F]{6})/.exec(f);
    return { pm1: /packetization-mode=1/.test(f), plid: m ? m[1].toLowerCase() : '' };
  }

  /** Rank of a codec for our offers (lower first); null = leave it out (the server cannot use it). */
  function codecRank(mime, fmtp, preferred) {
    const m = (mime || '').toLowerCase().replace(/^video\//, '');
    if (m === 'h264') {
      const { pm1, plid } = h264Info(fmtp);
      if (!pm1) return null;
      const base = preferred === 'h264' ? 0 : 20;
      if (plid === '42001f') return base;
      if (plid === '42e01f') return base + 1;
      if (plid.startsWith('42')) return base + 2;
      return base + 5;
    }
    if (m === 'vp8') return preferred === 'vp8' ? 0 : 10;
    if (m === 'rtx') return 90;
    return null;
  }

  function orderedCodecs(capabilities, preferred) {
    const ranked = [];
    capabilities.forEach((c, i) => {
      const r = codecRank(c.mimeType, c.sdpFmtpLine, preferred);
      if (r !== null) ranked.push({ c, r, i });
    });
    ranked.sort((a, b) => a.r - b.r || a.i - b.i);
    return ranked.map((x) => x.c);
  }

  function applyCodecPreferences(transceiver, preferred, direction) {
    try {
      const Caps = direction === 'send' ? G.RTCRtpSender : G.RTCRtpReceiver;
      if (!transceiver.setCodecPreferences || !Caps || !Caps.getCapabilities) return false;
      const caps = Caps.getCapabilities('video');
      if (!caps) return false;
      const list = orderedCodecs(caps.codecs, preferred);
      if (!list.some((c) => !/rtx$/i.test(c.mimeType))) return false;
      transceiver.setCodecPreferences(list);
      return true;
    } catch (e) {
      log.debug('setCodecPreferences failed; munging the SDP instead', e);
      return false;
    }
  }

  /** Fallback: reorder the payload types of every m=video line (drops what the server cannot use). */
  function mungeVideoCodecs(sdp, preferred) {
    const lines = sdp.split(/\r\n/);
    const out = [];
    let i = 0;
    while (i < lines.length) {
      if (!lines[i].startsWith('m=video')) {
        out.push(lines[i++]);
        continue;
      }
      let j = i + 1;
      while (j < lines.length && !lines[j].startsWith('m=')) j++;
      const section = lines.slice(i, j);
      const parts = section[0].split(' ');
      const pts = parts.slice(3);
      const name = {};
      const fmtp = {};
      for (const l of section) {
        let m = /^a=rtpmap:(\d+) ([^/]+)/.exec(l);
        if (m) name[m[1]] = m[2];
        m = /^a=fmtp:(\d+) (.*)$/.exec(l);
        if (m) fmtp[m[1]] = m[2];
      }
      const kept = [];
      pts.forEach((pt, idx) => {
        let r = codecRank(name[pt], fmtp[pt], preferred);
        if (r !== null && /^rtx$/i.test(name[pt] || '')) {
          const apt = /apt=(\d+)/.exec(fmtp[pt] || '');
          const target = apt && codecRank(name[apt[1]], fmtp[apt[1]], preferred);
          if (target === null || target === undefined) r = null;
        }
        if (r !== null) kept.push({ pt, r, idx });
      });
      kept.sort((a, b) => a.r - b.r || a.idx - b.idx);
      if (!kept.length) {
        out.push(...section);
      } else {
        const keep = new Set(kept.map((k) => k.pt));
        out.push(parts.slice(0, 3).concat(kept.map((k) => k.pt)).join(' '));
        for (const l of section.slice(1)) {
          const m = /^a=(?:rtpmap|fmtp|rtcp-fb):(\d+)/.exec(l);
          if (m && !keep.has(m[1])) continue;
          out.push(l);
        }
      }
      i = j;
    }
    return out.join('\r\n');
  }

  /** The video codec an SDP answer settled on (first payload of the first m=video). */
  function answeredVideoCodec(sdp) {
    const m = /^m=video \S+ \S+ (\d+)/m.exec(sdp || '');
    if (!m) return undefined;
    const r = new RegExp(`^a=rtpmap:${m[1]} ([^/\\s]+)`, 'm').exec(sdp);
    return r ? r[1].toLowerCase() : undefined;
  }

  function codecSupported(direction, codec) {
    try {
      const Caps = direction === 'send' ? G.RTCRtpSender : G.RTCRtpReceiver;
      if (!Caps || !Caps.getCapabilities) return undefined;
      const caps = Caps.getCapabilities('video');
      if (!caps) return undefined;
      return caps.codecs.some((c) => {
        const m = c.mimeType.toLowerCase();
        if (codec === 'h264') return m === 'video/h264' && h264Info(c.sdpFmtpLine).pm1;
        return m === `video/${codec}`;
      });
    } catch (_) {
      return undefined;
    }
  }

  /* ------------------------------------------------------------------------------------
   * Stats helpers
   * ---------------------------------------------------------------------------------- */
  async function statsOf(pc) {
    const out = [];
    if (!pc || pc.connectionState === 'closed') return out;
    try {
      const r = await pc.getStats();
      r.forEach((s) => out.push(s));
    } catch (_) {
      /* closed meanwhile */
    }
    return out;
  }
  const kindOf = (s) => s.kind || s.mediaType;
  function rttOf(stats) {
    let rtt;
    for (const s of stats) {
      if (s.type === 'candidate-pair' && s.state === 'succeeded' && s.nominated !== false) {
        if (typeof s.currentRoundTripTime === 'number') rtt = s.currentRoundTripTime * 1000;
      }
    }
    if (rtt === undefined) {
      for (const s of stats) {
        if (s.type === 'remote-inbound-rtp' && typeof s.roundTripTime === 'number') {
          rtt = Math.max(rtt || 0, s.roundTripTime * 1000);
        }
      }
    }
    return rtt === undefined ? undefined : Math.round(rtt);
  }

  /** actors/src/quality.rs network_quality. */
  function networkQuality(loss, rtt, connected) {
    if (!connected) return 6;
    if (loss === undefined && rtt === undefined) return 0;
    const l = Math.min(1, Math.max(0, loss || 0));
    const r = Math.max(0, rtt || 0);
    const byLoss = l < 0.01 ? 1 : l < 0.03 ? 2 : l < 0.08 ? 3 : l < 0.15 ? 4 : 5;
    const byRtt = r < 50 ? 1 : r < 100 ? 2 : r < 200 ? 3 : r < 400 ? 4 : 5;
    return Math.max(byLoss, byRtt);
  }

  /* ------------------------------------------------------------------------------------
   * Streams
   * ---------------------------------------------------------------------------------- */
  const VIDEO_PROFILES = Object.freeze({
    '120p': { width: 160, height: 120, frameRate: 15, bitrate: 200 },
    '180p': { width: 320, height: 180, frameRate: 15, bitrate: 350 },
    '240p': { width: 320, height: 240, frameRate: 15, bitrate: 400 },
    '360p': { width: 640, height: 360, frameRate: 15, bitrate: 800 },
    '480p': { width: 640, height: 480, frameRate: 15, bitrate: 900 },
    '720p': { width: 1280, height: 720, frameRate: 15, bitrate: 1500 },
    '1080p': { width: 1920, height: 1080, frameRate: 15, bitrate: 2000 },
    '1440p': { width: 2560, height: 1440, frameRate: 30, bitrate: 4860 },
    '4K': { width: 3840, height: 2160, frameRate: 30, bitrate: 9000 },
  });
  const SCREEN_PROFILES = Object.freeze({
    '480p': { width: 640, height: 480, frameRate: 5, bitrate: 900 },
    '480p_2': { width: 640, height: 480, frameRate: 30, bitrate: 1000 },
    '720p': { width: 1280, height: 720, frameRate: 5, bitrate: 1200 },
    '720p_2': { width: 1280, height: 720, frameRate: 30, bitrate: 3000 },
    '1080p': { width: 1920, height: 1080, frameRate: 5, bitrate: 1600 },
    '1080p_2': { width: 1920, height: 1080, frameRate: 30, bitrate: 4000 },
  });
  const AUDIO_PROFILES = Object.freeze({
    standard: { sampleRate: 48000, channelCount: 1, bitrate: 40 },
    high: { sampleRate: 48000, channelCount: 1, bitrate: 128 },
    'standard-stereo': { sampleRate: 48000, channelCount: 2, bitrate: 64 },
    'high-stereo': { sampleRate: 48000, channelCount: 2, bitrate: 192 },
  });

  function checkProfile(p, presets, what) {
    if (typeof p === 'string') {
      if (!presets[p]) {
        throw invalidParam(
          EXTRA.PARAM_TYPE,
          `${what} must be one of ${Object.keys(presets).join(', ')} or an object, got ${short(p)}`
        );
      }
      return Object.assign({}, presets[p]);
    }
    if (p && typeof p === 'object') {
      const out = {};
      for (const k of ['width', 'height', 'frameRate', 'bitrate', 'sampleRate', 'channelCount']) {
        if (p[k] === undefined) continue;
        if (typeof p[k] !== 'number' || !(p[k] > 0)) {
          throw invalidParam(EXTRA.PARAM_RANGE, `${what}.${k} must be a positive number`);
        }
        out[k] = p[k];
      }
      return out;
    }
    throw invalidParam(EXTRA.PARAM_TYPE, `${what} must be a preset name or an object`);
  }

  let streamSeq = 0;
  const randomId = () =>
    Math.random().toString(16).slice(2, 10) + (++streamSeq).toString(16).padStart(4, '0');

  class Stream extends Emitter {
    constructor(userId, type) {
      super();
      this._id = randomId();
      this._userId = userId;
      this._type = type; // 'main' | 'auxiliary'
      this._audioTrack = null;
      this._videoTrack = null;
      this._mediaStream = new MediaStream();
      this._player = null;
      this._audioLevel = null;
      this._volume = 1;
      this._sinkId = undefined;
    }
    getId() {
      return this._id;
    }
    getUserId() {
      return this._userId;
    }
    getType() {
      return this._type;
    }
    getAudioTrack() {
      return this._audioTrack;
    }
    getVideoTrack() {
      return this._videoTrack;
    }
    getMediaStream() {
      return this._mediaStream;
    }

    /** `given`: a MediaStream to use when it holds exactly these tracks (a subscription's msid stream). */
    _setTracks(audio, video, given) {
      const want = [audio, video].filter(Boolean);
      let ms;
      if (given && given.getTracks().length === want.length && want.every((t) => given.getTracks().includes(t))) {
        ms = given;
      } else {
        ms = new MediaStream(want);
      }
      const videoChanged = this._videoTrack !== video;
      const audioChanged = this._audioTrack !== audio;
      this._audioTrack = audio || null;
      this._videoTrack = video || null;
      this._mediaStream = ms;
      if (audioChanged && this._audioLevel) this._closeAudioLevel();
      if ((audioChanged || videoChanged) && this._player) this._render().catch(() => {});
    }

    /** Play into `elementId` (an element id or the element): a div#player_<id> with <video>/<audio>. */
    play(elementId, options) {
      const doc = G.document;
      const el = typeof elementId === 'string' ? doc && doc.getElementById(elementId) : elementId;
      if (!el || typeof el.appendChild !== 'function') {
        return Promise.reject(
          invalidParam(EXTRA.PARAM_TYPE, `play() needs an element or the id of one, got ${short(elementId)}`)
        );
      }
      const o = options || {};
      const local = this instanceof LocalStream;
      if (this._player && this._player.container !== el) this.stop();
      if (!this._player) {
        const div = doc.createElement('div');
        div.id = `player_${this._id}`;
        div.style.cssText =
          'width:100%;height:100%;position:relative;overflow:hidden;background-color:#000';
        el.appendChild(div);
        this._player = { container: el, div, video: null, audio: null, options: {}, listeners: [] };
      }
      const screen = local && this._config && this._config.screen;
      this._player.options = {
        objectFit: o.objectFit || (screen ? 'contain' : 'cover'),
        muted: o.muted === undefined ? local : !!o.muted,
        mirror: o.mirror === undefined ? local && !screen : !!o.mirror,
      };
      return this._render();
    }

    _render() {
      const p = this._player;
      if (!p) return Promise.resolve();
      const doc = G.document;
      const starts = [];
      // Video: always muted (audio goes through its own element, as TRTC does).
      if (this._videoTrack) {
        if (!p.video) {
          const v = doc.createElement('video');
          v.id = `video_${this._id}`;
          v.autoplay = true;
          v.muted = true;
          v.playsInline = true;
          v.setAttribute('playsinline', '');
          v.style.cssText = 'width:100%;height:100%;position:absolute;left:0;top:0;background-color:#000';
          p.div.appendChild(v);
          p.video = v;
          this._watchElement(v, 'video');
        }
        p.video.style.objectFit = p.options.objectFit;
        p.video.style.transform = p.options.mirror ? 'rotateY(180deg)' : '';
        const want = new MediaStream([this._videoTrack]);
        if (!p.video.srcObject || p.video.srcObject.getVideoTracks()[0] !== this._videoTrack) {
          p.video.srcObject = want;
          this._watchTrack(this._videoTrack, 'video');
          this._markFirstFrame(p.video);
        }
        starts.push(p.video.play());
      } else if (p.video) {
        p.video.srcObject = null;
      }
      if (this._audioTrack && !p.options.muted) {
        if (!p.audio) {
          const a = doc.createElement('audio');
          a.id = `audio_${this._id}`;
          a.autoplay = true;
          p.div.appendChild(a);
          p.audio = a;
          this._watchElement(a, 'audio');
        }
        p.audio.volume = this._volume;
        if (this._sinkId !== undefined && p.audio.setSinkId) p.audio.setSinkId(this._sinkId).catch(() => {});
        if (!p.audio.srcObject || p.audio.srcObject.getAudioTracks()[0] !== this._audioTrack) {
          p.audio.srcObject = new MediaStream([this._audioTrack]);
          this._watchTrack(this._audioTrack, 'audio');
        }
        starts.push(p.audio.play());
      } else if (p.audio) {
        p.audio.srcObject = null;
        p.audio.remove();
        p.audio = null;
      }
      return Promise.all(starts.map((s) => Promise.resolve(s))).then(
        () => undefined,
        (e) => {
          const name = e && e.name;
          const error = err(
            name === 'NotAllowedError' ? C.PLAY_NOT_ALLOWED : C.UNKNOWN,
            name === 'NotAllowedError'
              ? 'autoplay was blocked; call stream.resume() from a user gesture'
              : `play failed: ${(e && e.message) || e}`
          );
          if (name === 'AbortError') return undefined; // replaced by a newer source
          this._emit('error', error);
          throw error;
        }
      );
    }

    _markFirstFrame(video) {
      if (typeof video.requestVideoFrameCallback !== 'function') return;
      video.requestVideoFrameCallback(() => {
        if (this._onFirstRendered) this._onFirstRendered(now());
      });
    }

    _watchElement(el, type) {
      const on = (name, state, reason) => {
        const f = () => this._emit('player-state-changed', { type, state, reason });
        el.addEventListener(name, f);
      };
      on('playing', 'PLAYING', 'playing');
      on('pause', 'PAUSED', 'pause');
      on('ended', 'STOPPED', 'ended');
    }

    _watchTrack(track, type) {
      if (!track || track.__rtcroomWatched) return;
      track.__rtcroomWatched = true;
      const fire = (state, reason) => {
        const cur = type === 'video' ? this._videoTrack : this._audioTrack;
        if (cur === track && this._player) this._emit('player-state-changed', { type, state, reason });
      };
      track.addEventListener('mute', () => fire('PAUSED', 'mute'));
      track.addEventListener('unmute', () => fire('PLAYING', 'unmute'));
      track.addEventListener('ended', () => fire('STOPPED', 'ended'));
    }

    /** Stop playing and remove the player div. */
    stop() {
      const p = this._player;
      if (!p) return;
      this._player = null;
      for (const el of [p.video, p.audio]) {
        if (el) {
          try {
            el.pause();
          } catch (_) {
            /* ignore */
          }
          el.srcObject = null;
        }
      }
      if (p.div.parentNode) p.div.parentNode.removeChild(p.div);
      if (p.video) this._emit('player-state-changed', { type: 'video', state: 'STOPPED', reason: 'ended' });
      if (p.audio) this._emit('player-state-changed', { type: 'audio', state: 'STOPPED', reason: 'ended' });
    }

    /** Resume playback after an autoplay refusal (call from a user gesture). */
    resume() {
      const p = this._player;
      if (!p) return Promise.resolve();
      const all = [p.video, p.audio].filter(Boolean).map((el) => el.play());
      return Promise.all(all).then(() => undefined);
    }

    setAudioOutput(deviceId) {
      this._sinkId = deviceId;
      const a = this._player && this._player.audio;
      if (a && a.setSinkId) return a.setSinkId(deviceId);
      return Promise.resolve();
    }

    setAudioVolume(volume) {
      this._volume = Math.min(1, Math.max(0, Number(volume) || 0));
      const a = this._player && this._player.audio;
      if (a) a.volume = this._volume;
    }

    /** Audio level 0..1 (RMS of the last ~20 ms, WebAudio AnalyserNode). */
    getAudioLevel() {
      const track = this._audioTrack;
      if (!track || track.readyState === 'ended') return 0;
      const Ctx = G.AudioContext || G.webkitAudioContext;
      if (!Ctx) return 0;
      if (!this._audioLevel || this._audioLevel.track !== track) {
        this._closeAudioLevel();
        try {
          const ctx = new Ctx();
          const src = ctx.createMediaStreamSource(new MediaStream([track]));
          const analyser = ctx.createAnalyser();
          analyser.fftSize = 1024;
          src.connect(analyser);
          this._audioLevel = { track, ctx, src, analyser, buf: new Float32Array(analyser.fftSize) };
        } catch (e) {
          log.debug('audio level unavailable', e);
          return 0;
        }
      }
      const a = this._audioLevel;
      if (a.ctx.state === 'suspended') a.ctx.resume().catch(() => {});
      if (!track.enabled) return 0;
      a.analyser.getFloatTimeDomainData(a.buf);
      let sum = 0;
      for (let i = 0; i < a.buf.length; i++) sum += a.buf[i] * a.buf[i];
      return Math.min(1, Math.sqrt(sum / a.buf.length) * Math.SQRT2);
    }

    _closeAudioLevel() {
      const a = this._audioLevel;
      this._audioLevel = null;
      if (a) {
        try {
          a.src.disconnect();
          a.ctx.close();
        } catch (_) {
          /* ignore */
        }
      }
    }

    /** A snapshot of the current video frame as a PNG data URL ('' without video). */
    getVideoFrame() {
      const v = this._player && this._player.video;
      if (!v || !v.videoWidth) return '';
      const c = G.document.createElement('canvas');
      c.width = v.videoWidth;
      c.height = v.videoHeight;
      c.getContext('2d').drawImage(v, 0, 0);
      return c.toDataURL('image/png');
    }
  }

  /** TRTC.createStream(config): camera/microphone, screen, or given tracks. */
  class LocalStream extends Stream {
    constructor(config) {
      const c = config || {};
      if (!isNil(c.userId) && typeof c.userId !== 'string') {
        throw invalidParam(EXTRA.PARAM_TYPE, 'userId must be a string');
      }
      if (c.screen && c.video) throw invalidParam(undefined, 'screen and video cannot both be true');
      if (c.audio && c.screenAudio) throw invalidParam(undefined, 'audio and screenAudio cannot both be true');
      if ((c.audio || c.video) && (c.audioSource || c.videoSource)) {
        throw invalidParam(undefined, 'audio/video cannot be combined with audioSource/videoSource');
      }
      for (const k of ['audioSource', 'videoSource']) {
        if (c[k] && !(G.MediaStreamTrack && c[k] instanceof G.MediaStreamTrack)) {
          throw invalidParam(EXTRA.PARAM_TYPE, `${k} must be a MediaStreamTrack`);
        }
      }
      super(c.userId || '', 'main');
      this._config = Object.assign({}, c);
      this._videoProfile = Object.assign({}, c.screen ? SCREEN_PROFILES['1080p'] : VIDEO_PROFILES['480p']);
      this._audioProfile = Object.assign({}, AUDIO_PROFILES.standard);
      this._audioMuted = false;
      this._videoMuted = false;
      this._initialized = false;
      this._publisher = null; // {client, streamType} while published
      this._hint = undefined;
    }

    hasAudio() {
      return !!this._audioTrack;
    }
    hasVideo() {
      return !!this._videoTrack;
    }

    _videoConstraints() {
      const p = this._videoProfile;
      const v = {};
      if (p.width) v.width = { ideal: p.width };
      if (p.height) v.height = { ideal: p.height };
      if (p.frameRate) v.frameRate = { ideal: p.frameRate };
      if (this._config.cameraId) v.deviceId = { exact: this._config.cameraId };
      if (this._config.facingMode) v.facingMode = this._config.facingMode;
      return v;
    }
    _audioConstraints() {
      const p = this._audioProfile;
      const a = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };
      if (p.sampleRate) a.sampleRate = p.sampleRate;
      if (p.channelCount) a.channelCount = p.channelCount;
      if (this._config.microphoneId) a.deviceId = { exact: this._config.microphoneId };
      return a;
    }

    /** Capture (getUserMedia / getDisplayMedia) or take the given tracks. */
    async initialize() {
      const c = this._config;
      if (this._initialized) throw invalidOp(EXTRA.REPEATED_CALL, 'the stream is already initialized');
      let audio = c.audioSource || null;
      let video = c.videoSource || null;
      const md = G.navigator && G.navigator.mediaDevices;
      try {
        if (c.screen) {
          if (!md || !md.getDisplayMedia) throw err(C.NOT_SUPPORTED, 'screen capture is not supported here');
          const p = this._videoProfile;
          const s = await md.getDisplayMedia({
            video: { width: p.width, height: p.height, frameRate: p.frameRate },
            audio: !!c.screenAudio,
          });
          video = s.getVideoTracks()[0] || null;
          audio = s.getAudioTracks()[0] || null;
          if (video) {
            video.addEventListener('ended', () => this._emit('screen-sharing-stopped', {}));
          }
        } else if (c.audio || c.video) {
          if (!md || !md.getUserMedia) {
            throw err(C.NOT_SUPPORTED, 'getUserMedia is not available (a secure context — https or localhost — is required)');
          }
          const s = await md.getUserMedia({
            audio: c.audio ? this._audioConstraints() : false,
            video: c.video ? this._videoConstraints() : false,
          });
          audio = s.getAudioTracks()[0] || null;
          video = s.getVideoTracks()[0] || null;
        }
      } catch (e) {
        if (e instanceof RtcError) throw e;
        const name = (e && e.name) || 'Error';
        const notFound = name === 'NotFoundError' || name === 'DevicesNotFoundError' || name === 'OverconstrainedError';
        throw new RtcError({
          code: notFound ? C.DEVICE_NOT_FOUND : C.INITIALIZE_FAILED,
          message: `${name}: ${(e && e.message) || 'capture failed'}`,
          originError: e,
        });
      }
      if (!audio && !video) {
        throw invalidParam(undefined, 'the stream has neither audio nor video (set audio, video, screen or a source)');
      }
      if (video && this._hint) video.contentHint = this._hint;
      if (audio) audio.enabled = !this._audioMuted;
      if (video) video.enabled = !this._videoMuted;
      this._initialized = true;
      this._setTracks(audio, video);
    }

    setVideoProfile(profile) {
      this._videoProfile = checkProfile(profile, VIDEO_PROFILES, 'video profile');
      return this._applyVideoProfile();
    }
    setScreenProfile(profile) {
      this._videoProfile = checkProfile(profile, SCREEN_PROFILES, 'screen profile');
      return this._applyVideoProfile();
    }
    _applyVideoProfile() {
      const t = this._videoTrack;
      const jobs = [];
      if (t && t.applyConstraints) {
        const p = this._videoProfile;
        jobs.push(
          t.applyConstraints({ width: { ideal: p.width }, height: { ideal: p.height }, frameRate: { ideal: p.frameRate } })
            .catch((e) => log.warn('applyConstraints failed', e))
        );
      }
      if (this._publisher) jobs.push(this._publisher.client._applyBitrates(this));
      return Promise.all(jobs).then(() => undefined);
    }
    setAudioProfile(profile) {
      this._audioProfile = checkProfile(profile, AUDIO_PROFILES, 'audio profile');
      if (this._publisher) this._publisher.client._applyBitrates(this);
    }
    setVideoContentHint(hint) {
      this._hint = hint;
      if (this._videoTrack && 'contentHint' in this._videoTrack) this._videoTrack.contentHint = hint;
    }

    _mute(kind, muted) {
      const track = kind === 'audio' ? this._audioTrack : this._videoTrack;
      if (!track) return false;
      if (kind === 'audio') this._audioMuted = muted;
      else this._videoMuted = muted;
      track.enabled = !muted;
      if (this._publisher) this._publisher.client._sendMute(this, kind, muted);
      return true;
    }
    muteAudio() {
      return this._mute('audio', true);
    }
    unmuteAudio() {
      return this._mute('audio', false);
    }
    muteVideo() {
      return this._mute('video', true);
    }
    unmuteVideo() {
      return this._mute('video', false);
    }

    /** Switch camera or microphone while capturing (and publishing). */
    async switchDevice(type, deviceId) {
      if (type !== 'audio' && type !== 'video') throw invalidParam(EXTRA.PARAM_TYPE, "type must be 'audio' or 'video'");
      if (typeof deviceId !== 'string' || !deviceId) throw invalidParam(EXTRA.PARAM_EMPTY, 'deviceId is required');
      const md = G.navigator.mediaDevices;
      if (type === 'video') this._config.cameraId = deviceId;
      else this._config.microphoneId = deviceId;
      let s;
      try {
        s = await md.getUserMedia(
          type === 'video' ? { video: this._videoConstraints() } : { audio: this._audioConstraints() }
        );
      } catch (e) {
        throw new RtcError({ code: C.INITIALIZE_FAILED, message: `${e.name}: ${e.message}`, originError: e });
      }
      const track = type === 'video' ? s.getVideoTracks()[0] : s.getAudioTracks()[0];
      await this.replaceTrack(track);
    }

    /** Replace the audio or video track (the published stream keeps flowing, no renegotiation). */
    async replaceTrack(track) {
      if (!track || !track.kind) throw invalidParam(EXTRA.PARAM_TYPE, 'replaceTrack() needs a MediaStreamTrack');
      const old = track.kind === 'audio' ? this._audioTrack : this._videoTrack;
      if (!old) throw invalidOp(undefined, `the stream has no ${track.kind} track to replace; use addTrack()`);
      track.enabled = !(track.kind === 'audio' ? this._audioMuted : this._videoMuted);
      if (this._publisher) await this._publisher.client._replaceTrack(this, old, track);
      if (track.kind === 'audio') this._setTracks(track, this._videoTrack);
      else this._setTracks(this._audioTrack, track);
      if (old !== track) old.stop();
    }

    /** Add an audio or video track (a published stream is published again with it). */
    async addTrack(track) {
      if (!track || !track.kind) throw invalidParam(EXTRA.PARAM_TYPE, 'addTrack() needs a MediaStreamTrack');
      if ((track.kind === 'audio' ? this._audioTrack : this._videoTrack)) {
        throw invalidOp(undefined, `the stream already has a ${track.kind} track; use replaceTrack()`);
      }
      if (track.kind === 'audio') this._setTracks(track, this._videoTrack);
      else this._setTracks(this._audioTrack, track);
      this._initialized = true;
      if (this._publisher) await this._publisher.client._republish(this);
    }

    /** Remove the audio or video track (a published stream is published again without it). */
    async removeTrack(track) {
      if (!track || (track !== this._audioTrack && track !== this._videoTrack)) {
        throw invalidParam(undefined, 'removeTrack() needs one of this stream\'s tracks');
      }
      if (!this._audioTrack || !this._videoTrack) {
        throw invalidOp(undefined, 'a stream must keep one track; unpublish it instead');
      }
      if (track.kind === 'audio') this._setTracks(null, this._videoTrack);
      else this._setTracks(this._audioTrack, null);
      if (this._publisher) await this._publisher.client._republish(this);
    }

    /** Stop capturing and playing. Unpublish first when published. */
    close() {
      this.stop();
      this._closeAudioLevel();
      for (const t of [this._audioTrack, this._videoTrack]) if (t) t.stop();
      this._initialized = false;
    }
  }

  /** A stream published by another member (`stream-added`). */
  class RemoteStream extends Stream {
    constructor(info) {
      super(info.userId, info.streamType === 'auxiliary' ? 'auxiliary' : 'main');
      this._id = `${info.userId}_${this._type}_${randomId()}`;
      this._info = Object.assign({}, info);
      this._removed = false;
      this._localAudioOff = false;
      this._localVideoOff = false;
    }
    hasAudio() {
      return !!this._info.hasAudio;
    }
    hasVideo() {
      return !!this._info.hasVideo;
    }
    /** rtcroom: the stream's video codec ('h264' | 'vp8'), when it has video with media. */
    getVideoCodec() {
      return this._info.videoCodec;
    }
    _setTracks(audio, video, given) {
      if (audio) audio.enabled = !this._localAudioOff;
      if (video) video.enabled = !this._localVideoOff;
      super._setTracks(audio, video, given);
    }
    _localMute(kind, off) {
      if (kind === 'audio') this._localAudioOff = off;
      else this._localVideoOff = off;
      const t = kind === 'audio' ? this._audioTrack : this._videoTrack;
      if (t) t.enabled = !off;
      return true;
    }
    /** Stop playing this stream's audio here (the publisher is not told). */
    muteAudio() {
      return this._localMute('audio', true);
    }
    unmuteAudio() {
      return this._localMute('audio', false);
    }
    muteVideo() {
      return this._localMute('video', true);
    }
    unmuteVideo() {
      return this._localMute('video', false);
    }
    close() {
      this.stop();
      this._closeAudioLevel();
    }
  }

  /* ------------------------------------------------------------------------------------
   * Client
   * ---------------------------------------------------------------------------------- */
  const STATE = { idle: 'DISCONNECTED', connecting: 'CONNECTING', joined: 'CONNECTED', reconnecting: 'RECONNECTING' };
  const BAN_REASON = { kick: 'kick', banned: 'banned', room_disband: 'room-disband', 'room-disband': 'room-disband' };
  const streamKey = (userId, type) => `${userId}|${type}`;

  class Client extends Emitter {
    constructor(settings) {
      super();
      this._cfg = settings;
      this._t = settings.timings;
      this._phase = 'idle'; // idle | connecting | joined | reconnecting
      this._attempt = 0;
      this._gen = 0;
      this._signal = null;
      this._params = null;
      this._pendingJoin = null;
      this._early = [];
      this._members = new Set();
      this._streams = new Map(); // key -> RemoteStream
      this._links = new Map(); // 'up|main' / 'down|user|main' -> link
      this._pcSeq = 0;
      /** TRTC's small stream: published beside the big one (simulcast) once enabled. */
      this._smallStream = false;
      this._smallProfile = { width: 160, height: 120, bitrate: 100, frameRate: 15 };
      /** setRemoteVideoStreamType choices: 'user|main' -> 'big' | 'small'. */
      this._videoTypes = new Map();
      this._destroyed = false;
      this._qualityTimer = null;
      this._lossWindow = null;
      this._unload = null;
      /** Performance marks (performance.now() ms); see docs/web-sdk.md "Timings". */
      this._timing = { join: null, joins: [], publish: {}, subscribe: {}, reconnects: [] };
    }

    /* ---- state ---- */

    get connectionState() {
      return STATE[this._phase];
    }

    _setPhase(phase) {
      const prev = STATE[this._phase];
      this._phase = phase;
      const state = STATE[phase];
      if (prev !== state) {
        log.info(`connection state ${prev} -> ${state}`);
        this._emit('connection-state-changed', { prevState: prev, state });
      }
    }

    _checkAlive(fn) {
      if (this._destroyed) throw invalidOp(undefined, `${fn}() called on a destroyed client`);
    }

    _requireJoined(fn) {
      this._checkAlive(fn);
      if (this._phase === 'reconnecting') {
        throw invalidOp(EXTRA.NOT_ENTERED_ROOM, `${fn}() is not possible while reconnecting; wait for CONNECTED`);
      }
      if (this._phase !== 'joined') {
        throw invalidOp(EXTRA.NOT_ENTERED_ROOM, `${fn}() needs a joined client: call join() and await it first`);
      }
    }

    /* ---- join / leave ---- */

    /** Set the signalling URL before joining (TRTC v4's setProxyServer; `websocketProxy` form too). */
    setProxyServer(url) {
      const u = url && typeof url === 'object' ? url.websocketProxy : url;
      this._cfg.serverUrl = checkUrl(u);
    }
    setTurnServer() {
      log.warn('setTurnServer(): rtcroom media servers are reached directly; ignored');
    }

    async join(options) {
      this._checkAlive('join');
      const p = validateJoinOptions(options, this._cfg.useStringRoomId);
      if (this._phase !== 'idle') {
        throw invalidOp(EXTRA.REPEATED_CALL, 'join() called while already joining or joined; call leave() first');
      }
      this._params = p;
      this._timing.join = { start: now() };
      this._setPhase('connecting');
      return new Promise((resolve, reject) => {
        this._pendingJoin = { resolve, reject };
        this._startAttempt(0);
      });
    }

    _joinMessage() {
      const p = this._params;
      const m = {
        type: 'join',
        sdkAppId: this._cfg.sdkAppId,
        userId: this._cfg.userId,
        userSig: this._cfg.userSig,
        roomId: p.room.text,
        useStringRoomId: p.room.isString,
        mode: this._cfg.mode,
        role: p.role,
        autoSubscribe: this._cfg.autoSubscribe,
      };
      if (p.privateMapKey !== undefined) m.privateMapKey = p.privateMapKey;
      return m;
    }

    _dropConnection() {
      this._gen++;
      this._early = [];
      if (this._signal) {
        this._signal.close();
        this._signal = null;
      }
    }

    /** Open a connection and join on it: the user's join (attempt 0) or re-join attempt n. */
    _startAttempt(attempt) {
      this._dropConnection();
      const gen = this._gen;
      const t0 = now();
      const deadline = t0 + this._t.joinTimeoutMs;
      const timeoutError = () => err(C.JOIN_ROOM_FAILED, 'join room timeout.');
      const sig = new Signal(this._cfg.serverUrl, {
        onEvent: (ev) => {
          if (gen === this._gen) this._onServerEvent(ev);
        },
        onLost: (reason) => {
          if (gen === this._gen) this._onLost(reason);
        },
      });
      this._signal = sig;
      const mark = attempt === 0 ? this._timing.join : { start: t0 };
      sig
        .connect(this._t.joinTimeoutMs, timeoutError())
        .then(() => {
          if (gen !== this._gen) throw new SignalFailure('lost');
          mark.connected = now();
          mark.sent = now();
          return sig.request(this._joinMessage(), deadline - now(), timeoutError());
        })
        .then(
          (data) => {
            mark.reply = now();
            this._attemptDone(gen, attempt, null, data, mark);
          },
          (e) => this._attemptDone(gen, attempt, e instanceof SignalFailure ? e : new SignalFailure('lost', null, String(e)), null, mark)
        );
    }

    _attemptDone(gen, attempt, failure, data, mark) {
      if (gen !== this._gen) return;
      if (!failure && (!data || data.kind !== 'joined')) {
        failure = new SignalFailure('rejected', err(C.JOIN_ROOM_FAILED, 'the server answered the join without a join result'));
      }
      if (!failure) {
        const wasRejoin = attempt > 0;
        if (wasRejoin ? this._phase !== 'reconnecting' : this._phase !== 'connecting') {
          this._dropConnection();
          return;
        }
        mark.ms = mark.reply - mark.sent;
        mark.totalMs = mark.reply - mark.start;
        const server = Number(data.heartbeatIntervalS) > 0 ? data.heartbeatIntervalS * 1000 : Infinity;
        this._signal.startHeartbeat(Math.min(this._t.heartbeatIntervalMs, server), this._t.missedHeartbeats);
        this._joinedRole = data.role;
        if (wasRejoin) {
          const r = this._reconnectMark;
          if (r) {
            r.rejoined = now();
            r.ms = r.rejoined - r.lost;
            r.attempts = attempt;
            this._reconnectMark = null;
          }
        } else {
          this._timing.joins.push(mark);
        }
        this._setPhase('joined');
        this._startQuality();
        this._watchUnload(true);
        this._applyJoinResult(data, wasRejoin);
        if (this._pendingJoin) {
          const p = this._pendingJoin;
          this._pendingJoin = null;
          p.resolve();
        }
        const early = this._early;
        this._early = [];
        for (const ev of early) this._onServerEvent(ev);
        if (gen === this._gen && this._signal && this._signal.closed && this._phase === 'joined') {
          // The connection died between the answer and now (actors' `current_lost`).
          this._onLost('lost right after joining');
        }
        return;
      }
      if (this._signal) {
        this._signal.close();
        this._signal = null;
      }
      this._early = [];
      if (attempt === 0) {
        if (this._phase !== 'connecting') return;
        const e = failure.joinError();
        log.warn('join failed:', e.message);
        this._setPhase('idle');
        if (this._pendingJoin) {
          const p = this._pendingJoin;
          this._pendingJoin = null;
          p.reject(e);
        }
        return;
      }
      if (this._phase !== 'reconnecting') return;
      if (failure.retryable()) {
        log.info(`reconnect attempt ${attempt} failed: ${failure.message}`);
        this._scheduleAttempt(attempt + 1);
      } else {
        const e = failure.joinError();
        log.warn('re-join refused:', e.message);
        this._end();
        this._emit('error', e);
        this._setPhase('idle');
      }
    }

    /** The wait before reconnect attempt n (1-based), or undefined when attempts are spent. */
    _backoff(n) {
      if (n < 1 || n > this._t.reconnectAttempts) return undefined;
      return this._t.backoffUnitMs * BACKOFF_STEPS[Math.min(n - 1, BACKOFF_STEPS.length - 1)];
    }

    _scheduleAttempt(n) {
      const delay = this._backoff(n);
      if (delay === undefined) {
        const e = err(
          C.SIGNAL_CHANNEL_RECONNECTION_FAILED,
          `signalling channel reconnection failed after ${n - 1} attempts`
        );
        log.warn(e.message);
        this._dropConnection();
        this._end();
        this._emit('error', e);
        this._setPhase('idle');
        return;
      }
      this._attempt = n;
      const gen = this._gen;
      log.info(`reconnect attempt ${n} in ${delay} ms`);
      setTimeout(() => {
        if (gen === this._gen && this._phase === 'reconnecting' && this._attempt === n) {
          this._startAttempt(n);
        }
      }, delay);
    }

    _onLost(reason) {
      if (this._phase !== 'joined') return; // attempts report their own failures
      log.info(`signalling lost: ${reason}`);
      this._signal = null;
      this._reconnectMark = { lost: now(), reason };
      this._timing.reconnects.push(this._reconnectMark);
      if (this._backoff(1) === undefined) {
        this._scheduleAttempt(1);
        return;
      }
      this._setPhase('reconnecting');
      this._scheduleAttempt(1);
    }

    /** Finished (left, banned, attempts spent, re-join refused): media closed, room forgotten. */
    _end() {
      this._stopQuality();
      this._watchUnload(false);
      for (const [, link] of this._links) {
        this._closeLink(link);
        if (link.up) link.stream._publisher = null;
      }
      this._links.clear();
      for (const [, s] of this._streams) {
        s._removed = true;
        s.stop();
      }
      this._streams.clear();
      this._members.clear();
    }

    async leave() {
      this._checkAlive('leave');
      const phase = this._phase;
      if (phase === 'idle') return; // TRTC v4: leaving when not in a room is harmless
      const sig = this._signal;
      if (phase === 'connecting' && this._pendingJoin) {
        const p = this._pendingJoin;
        this._pendingJoin = null;
        p.reject(err(C.JOIN_ROOM_FAILED, 'leave() was called during join()'));
      }
      this._signal = null; // keep it open for the leave request below
      this._gen++;
      this._end();
      this._setPhase('idle');
      if (phase === 'joined' && sig) {
        try {
          await sig.request({ type: 'leave' }, this._t.requestTimeoutMs);
        } catch (e) {
          log.debug('leave request failed', e && e.message);
        }
      }
      if (sig) sig.close(1000);
    }

    destroy() {
      if (this._destroyed) return;
      if (this._phase !== 'idle') throw invalidOp(undefined, 'destroy() needs a client that has left the room: call leave() first');
      this._destroyed = true;
      this.off('*');
    }

    /**
     * TRTC's sendCustomMessage({cmdId, data}): data (ArrayBuffer or typed array, 1 byte to
     * 1 KB) to the room's other members, who get 'custom-message' {userId, cmdId, seq, data}.
     * cmdId 1–10; anchors only; at most 30 messages and 8 KB per second.
     */
    async sendCustomMessage({ cmdId, data } = {}) {
      this._checkAlive('sendCustomMessage');
      if (!Number.isInteger(cmdId) || cmdId < 1 || cmdId > 10) {
        throw invalidParam(EXTRA.PARAM_RANGE, `cmdId must be 1–10, got ${short(cmdId)}`);
      }
      let bytes;
      if (data instanceof ArrayBuffer) bytes = new Uint8Array(data);
      else if (ArrayBuffer.isView(data)) bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
      else throw invalidParam(EXTRA.PARAM_TYPE, 'data must be an ArrayBuffer or a typed array');
      if (bytes.length === 0) throw invalidParam(EXTRA.EMPTY_BUFFER, 'data cannot be empty');
      if (bytes.length > 1024) throw invalidParam(EXTRA.BUFFER_OVERSIZE, `data is at most 1024 bytes, got ${bytes.length}`);
      this._requireJoined('sendCustomMessage');
      let bin = '';
      for (const b of bytes) bin += String.fromCharCode(b);
      try {
        await this._signal.request({ type: 'custom-message', cmdId, data: btoa(bin) }, this._t.requestTimeoutMs);
      } catch (e) {
        throw e instanceof SignalFailure ? e.requestError(C.API_CALL_TIMEOUT) : e;
      }
    }

    async switchRole(role) {
      this._checkAlive('switchRole');
      const r = parseRole(role);
      this._requireJoined('switchRole');
      if (this._cfg.mode !== 'live') throw invalidOp(undefined, 'switchRole() is only for live mode');
      try {
        await this._signal.request(
          { type: 'switch-role', role: r },
          this._t.requestTimeoutMs,
          err(C.SWITCH_ROLE_FAILED, 'switch role timeout')
        );
      } catch (e) {
        throw e instanceof SignalFailure ? e.requestError(C.SWITCH_ROLE_FAILED) : e;
      }
      this._params.role = r;
      if (r === 'audience') {
        // The server removed this member's streams.
        for (const [key, link] of [...this._links]) {
          if (!link.up) continue;
          this._closeLink(link);
          link.stream._publisher = null;
          this._links.delete(key);
        }
      }
    }

    _watchUnload(on) {
      if (!G.addEventListener) return;
      if (on && !this._unload) {
        this._unload = () => {
          if (this._signal) this._signal.fire({ type: 'leave' });
        };
        G.addEventListener('pagehide', this._unload);
      } else if (!on && this._unload) {
        G.removeEventListener('pagehide', this._unload);
        this._unload = null;
      }
    }

    /* ---- room state (actors/src/room.rs) ---- */

    _info(raw) {
      return {
        userId: raw.userId,
        streamType: raw.streamType === 'auxiliary' ? 'auxiliary' : 'main',
        hasAudio: !!raw.hasAudio,
        hasVideo: !!raw.hasVideo,
        audioMuted: !!raw.audioMuted,
        videoMuted: !!raw.videoMuted,
        videoCodec: raw.videoCodec,
      };
    }

    _muteEvents(old, neu) {
      if (old.audioMuted !== neu.audioMuted) this._emit(neu.audioMuted ? 'mute-audio' : 'unmute-audio', { userId: neu.userId });
      if (old.videoMuted !== neu.videoMuted) this._emit(neu.videoMuted ? 'mute-video' : 'unmute-video', { userId: neu.userId });
    }

    /** A join (or re-join) answer: move to its snapshot and report the difference. */
    _applyJoinResult(data, rejoin) {
      const members = new Set((data.members || []).map((m) => m.userId));
      const infos = new Map();
      for (const raw of data.streams || []) {
        const info = this._info(raw);
        infos.set(streamKey(info.userId, info.streamType), info);
      }
      for (const [k, s] of [...this._streams]) {
        if (!infos.has(k)) this._streamGone(k, s, rejoin);
      }
      for (const m of [...this._members]) {
        if (!members.has(m)) {
          this._members.delete(m);
          this._emit('peer-leave', { userId: m, reason: 1 });
        }
      }
      for (const m of members) {
        if (!this._members.has(m)) {
          this._members.add(m);
          this._emit('peer-join', { userId: m });
        }
      }
      if (rejoin) this._resumeMedia(infos);
      for (const [, info] of infos) this._streamInfo(info, rejoin);
    }

    _onServerEvent(ev) {
      if (this._phase === 'connecting' || this._phase === 'reconnecting') {
        this._early.push(ev); // sent after the join answer, which is still on its way
        return;
      }
      if (this._phase !== 'joined') return;
      switch (ev.event) {
        case 'peer-join':
          if (!this._members.has(ev.userId)) {
            this._members.add(ev.userId);
            this._emit('peer-join', { userId: ev.userId });
          }
          break;
        case 'peer-leave': {
          for (const [k, s] of [...this._streams]) {
            if (s.getUserId() === ev.userId) this._streamGone(k, s, false);
          }
          if (this._members.delete(ev.userId)) {
            this._emit('peer-leave', { userId: ev.userId, reason: ev.reason === undefined ? 0 : ev.reason });
          }
          break;
        }
        case 'stream-added':
        case 'stream-updated':
          this._streamInfo(this._info(ev), false);
          break;
        case 'stream-removed': {
          const k = streamKey(ev.userId, ev.streamType === 'auxiliary' ? 'auxiliary' : 'main');
          const s = this._streams.get(k);
          if (s) this._streamGone(k, s, false);
          break;
        }
        case 'mute-audio':
        case 'unmute-audio':
        case 'mute-video':
        case 'unmute-video': {
          const s = this._streams.get(streamKey(ev.userId, 'main')) ||
            [...this._streams.values()].find((x) => x.getUserId() === ev.userId);
          if (s) {
            if (ev.event.endsWith('audio')) s._info.audioMuted = ev.event === 'mute-audio';
            else s._info.videoMuted = ev.event === 'mute-video';
          }
          this._emit(ev.event, { userId: ev.userId });
          break;
        }
        case 'client-banned': {
          if (ev.reason === 'user_time_out') {
            // TRTC re-joins silently after a heartbeat timeout.
            log.info('timed out by the server; re-joining');
            if (this._signal) this._signal.close();
            this._signal = null;
            this._onLost('timed out by the server');
            break;
          }
          const reason = BAN_REASON[ev.reason] || ev.reason;
          log.warn(`removed from the room: ${reason} (${ev.message || ''})`);
          this._dropConnection();
          this._end();
          this._emit('client-banned', { reason, message: ev.message || '' });
          this._setPhase('idle');
          break;
        }
        case 'video-layer-changed':
          this._emit('video-layer-changed', { userId: ev.userId, streamType: ev.streamType, videoType: ev.videoType, rid: ev.rid, reason: ev.reason });
          break;
        case 'layers-wanted':
          this._setActiveLayers(ev.streamType === 'auxiliary' ? 'auxiliary' : 'main', ev.rids || []);
          break;
        case 'custom-message': {
          const bin = atob(ev.data || '');
          const data = new Uint8Array(bin.length);
          for (let i = 0; i < bin.length; i++) data[i] = bin.charCodeAt(i);
          this._emit('custom-message', { userId: ev.userId, cmdId: ev.cmdId, seq: ev.seq, data: data.buffer });
          break;
        }
        default:
          log.debug('unknown event', ev.event);
      }
    }

    /**
     * A stream was announced (join answer, stream-added, stream-updated). `resumed`: a
     * re-join answer, whose links _resumeMedia already renegotiated with this info.
     */
    _streamInfo(info, resumed) {
      const k = streamKey(info.userId, info.streamType);
      let s = this._streams.get(k);
      if (!s) {
        s = new RemoteStream(info);
        this._streams.set(k, s);
        this._emit('stream-added', { stream: s });
        this._followStreamAdded(k, s);
        return;
      }
      const old = s._info;
      s._info = info;
      const tracksChanged = old.hasAudio !== info.hasAudio || old.hasVideo !== info.hasVideo;
      if (tracksChanged) this._emit('stream-updated', { stream: s });
      this._muteEvents(old, info);
      const codecChanged = info.videoCodec && old.videoCodec && info.videoCodec !== old.videoCodec;
      const link = this._links.get(`down|${k}`);
      if (link && !resumed && (tracksChanged || codecChanged)) {
        const a = link.wantAudio && info.hasAudio;
        const v = link.wantVideo && info.hasVideo;
        if ((a !== link.audio || v !== link.video || codecChanged) && (a || v)) {
          link.audio = a;
          link.video = v;
          this._negotiate(link, null);
        }
      }
    }

    _streamGone(k, s, rejoin) {
      this._streams.delete(k);
      s._removed = true;
      this._emit('stream-removed', { stream: s });
      const link = this._links.get(`down|${k}`);
      if (!link) return;
      if (rejoin) {
        // The publisher may only not be back yet (server restart): wait for its stream.
        this._closeLink(link);
        link.state = 'waiting';
      } else {
        this._closeLink(link);
        this._links.delete(`down|${k}`);
      }
    }

    _followStreamAdded(k, s) {
      const link = this._links.get(`down|${k}`);
      if (link && link.state === 'waiting') {
        link.remote = s;
        link.announced = false;
        link.audio = link.wantAudio && s.hasAudio();
        link.video = link.wantVideo && s.hasVideo();
        if (link.audio || link.video) this._negotiate(link, null);
        return;
      }
      if (!link && this._cfg.autoSubscribe && (s.hasAudio() || s.hasVideo())) {
        this._subscribeLink(s, true, true, true).catch((e) => log.warn(`auto-subscribe to ${s.getUserId()} failed:`, e.message));
      }
    }

    getRemoteMutedState() {
      const out = [];
      for (const [, s] of this._streams) {
        if (s.getType() !== 'main') continue;
        const i = s._info;
        out.push({ userId: i.userId, hasAudio: i.hasAudio, hasVideo: i.hasVideo, hasSmall: false, audioMuted: i.audioMuted, videoMuted: i.videoMuted });
      }
      return out;
    }

    /* ---- media links ---- */

    _closeLink(link) {
      clearTimeout(link.graceTimer);
      clearTimeout(link.rebuildTimer);
      link.pcId = ++this._pcSeq; // late reports of the old one are stale from here on
      if (link.pc) {
        try {
          link.pc.close();
        } catch (_) {
          /* ignore */
        }
        link.pc = null;
      }
      if (link.state !== 'waiting') link.state = 'closed';
    }

    async publish(localStream, options) {
      this._requireJoined('publish');
      if (!(localStream instanceof LocalStream)) throw invalidParam(EXTRA.PARAM_TYPE, 'publish() needs a LocalStream from TRTC.createStream()');
      if (this._cfg.mode === 'live' && this._params.role === 'audience') {
        throw invalidOp(EXTRA.AUDIENCE_ROLE, "an audience member cannot publish: switchRole('anchor') first");
      }
      if (!localStream.hasAudio() && !localStream.hasVideo()) {
        throw invalidOp(undefined, 'the stream has no tracks: call initialize() first');
      }
      if (localStream._publisher) throw invalidOp(EXTRA.REPEATED_CALL, 'this stream is already published');
      const type = options && options.isAuxiliary ? 'auxiliary' : 'main';
      const key = `up|${type}`;
      if (this._links.has(key)) throw invalidOp(EXTRA.REPEATED_CALL, `a ${type} stream is already published`);
      const link = { key, up: true, type, stream: localStream, pc: null, pcId: 0, state: 'negotiating', failures: 0, announced: true };
      this._links.set(key, link);
      localStream._publisher = { client: this, streamType: type };
      localStream._type = type;
      if (!localStream._userId) localStream._userId = this._cfg.userId;
      const mark = (this._timing.publish[type] = { start: now() });
      try {
        await new Promise((resolve, reject) => this._negotiate(link, { resolve, reject, mark }));
      } catch (e) {
        if (this._links.get(key) === link) this._links.delete(key);
        localStream._publisher = null;
        throw e;
      }
    }

    async unpublish(localStream) {
      this._requireJoined('unpublish');
      const link = localStream && localStream._publisher && this._links.get(`up|${localStream._publisher.streamType}`);
      if (!link || link.stream !== localStream) throw invalidOp(EXTRA.REPEATED_CALL, 'this stream is not published');
      this._closeLink(link);
      this._links.delete(link.key);
      localStream._publisher = null;
      await this._bestEffort({ type: 'unpublish', streamType: link.type });
    }

    async _republish(localStream) {
      const link = localStream._publisher && this._links.get(`up|${localStream._publisher.streamType}`);
      if (!link || this._phase !== 'joined') return;
      await new Promise((resolve, reject) => this._negotiate(link, { resolve, reject, mark: { start: now() } }));
    }

    async subscribe(remoteStream, options) {
      this._requireJoined('subscribe');
      if (!(remoteStream instanceof RemoteStream)) throw invalidParam(EXTRA.PARAM_TYPE, 'subscribe() needs a RemoteStream from stream-added');
      const o = options || {};
      const audio = o.audio !== false;
      const video = o.video !== false;
      if (!audio && !video) throw invalidOp(undefined, 'subscribe() needs audio or video (or both)');
      return this._subscribeLink(remoteStream, audio, video, false);
    }

    _subscribeLink(remoteStream, wantAudio, wantVideo, auto) {
      const k = streamKey(remoteStream.getUserId(), remoteStream.getType());
      if (remoteStream._removed || this._streams.get(k) !== remoteStream) {
        return Promise.reject(err(C.REMOTE_STREAM_NOT_EXIST, `${remoteStream.getUserId()} has no ${remoteStream.getType()} stream published`));
      }
      const audio = wantAudio && remoteStream.hasAudio();
      const video = wantVideo && remoteStream.hasVideo();
      if (!audio && !video) return Promise.reject(invalidOp(undefined, 'the stream has none of the tracks asked for'));
      if (video && remoteStream.getVideoCodec() && codecSupported('recv', remoteStream.getVideoCodec()) === false) {
        return Promise.reject(err(C.NOT_SUPPORTED, `this browser cannot decode ${remoteStream.getVideoCodec().toUpperCase()}, the codec of ${remoteStream.getUserId()}'s video`));
      }
      const key = `down|${k}`;
      const old = this._links.get(key);
      if (old && old.remote === remoteStream && old.audio === audio && old.video === video && (old.state === 'negotiating' || old.state === 'up')) {
        // Same subscription (e.g. subscribe() in a stream-added handler with autoSubscribe on).
        if (!auto) old.auto = false;
        return old.state === 'up' ? Promise.resolve() : old.done;
      }
      if (old) {
        this._closeLink(old);
        this._links.delete(key);
      }
      const link = { key, up: false, remote: remoteStream, userId: remoteStream.getUserId(), type: remoteStream.getType(), wantAudio, wantVideo, audio, video, auto, pc: null, pcId: 0, state: 'negotiating', failures: 0, announced: false };
      this._links.set(key, link);
      const mark = (this._timing.subscribe[`${link.userId}/${link.type}`] = { start: now(), auto });
      link.done = new Promise((resolve, reject) => this._negotiate(link, { resolve, reject, mark })).catch((e) => {
        if (this._links.get(key) === link && link.state !== 'up' && !link.retrying) this._links.delete(key);
        throw e;
      });
      return link.done;
    }

    async unsubscribe(remoteStream) {
      this._requireJoined('unsubscribe');
      if (!(remoteStream instanceof RemoteStream)) throw invalidParam(EXTRA.PARAM_TYPE, 'unsubscribe() needs a RemoteStream');
      const key = `down|${streamKey(remoteStream.getUserId(), remoteStream.getType())}`;
      const link = this._links.get(key);
      if (!link || link.remote !== remoteStream) throw invalidOp(undefined, `not subscribed to ${remoteStream.getUserId()}'s ${remoteStream.getType()} stream`);
      this._closeLink(link);
      this._links.delete(key);
      remoteStream._setTracks(null, null);
      await this._bestEffort({ type: 'unsubscribe', userId: link.userId, streamType: link.type });
    }

    async _bestEffort(msg) {
      const sig = this._signal;
      if (!sig) return;
      try {
        await sig.request(msg, this._t.requestTimeoutMs);
      } catch (e) {
        log.debug(`${msg.type} failed (ignored):`, e && e.message);
      }
    }

    _sendMute(localStream, kind, muted) {
      const p = localStream._publisher;
      const link = p && this._links.get(`up|${p.streamType}`);
      if (!link || link.state !== 'up' || this._phase !== 'joined') return; // sent on (re)connect
      this._bestEffort({ type: 'mute', streamType: p.streamType, kind, muted });
    }

    async _replaceTrack(localStream, oldTrack, track) {
      const link = localStream._publisher && this._links.get(`up|${localStream._publisher.streamType}`);
      if (!link || !link.pc) return;
      for (const s of link.pc.getSenders()) {
        if (s.track === oldTrack || (s.track === null && s.__kind === track.kind)) await s.replaceTrack(track);
      }
    }

    _encodingFor(localStream, kind) {
      if (kind === 'audio') {
        return { maxBitrate: (localStream._audioProfile.bitrate || 40) * 1000 };
      }
      const p = localStream._videoProfile;
      const e = {};
      if (p.bitrate) e.maxBitrate = p.bitrate * 1000;
      if (p.frameRate) e.maxFramerate = p.frameRate;
      return e;
    }

    async _applyBitrates(localStream) {
      const link = localStream._publisher && this._links.get(`up|${localStream._publisher.streamType}`);
      if (!link || !link.pc) return;
      for (const s of link.pc.getSenders()) {
        if (!s.track || !s.getParameters) continue;
        try {
          const params = s.getParameters();
          if (!params.encodings || !params.encodings.length) continue;
          // With a small stream, the profile is the big layer's ('h').
          const e = params.encodings.find((x) => x.rid === 'h') || params.encodings[0];
          Object.assign(e, this._encodingFor(localStream, s.track.kind));
          await s.setParameters(params);
        } catch (e) {
          log.debug('setParameters failed', e);
        }
      }
    }

    /**
     * One offer/answer exchange for `link` on a new peer connection (first negotiation,
     * rebuild, or resume after a re-join). `user`: {resolve, reject, mark} for a user call.
     */
    _negotiate(link, user) {
      this._closeLink(link);
      const id = link.pcId;
      link.state = 'negotiating';
      const stale = () => link.pcId !== id || this._links.get(link.key) !== link;
      const mark = user ? user.mark : { start: now(), rebuild: true };
      const fail = (e) => {
        if (stale()) {
          if (user) user.reject(invalidOp(undefined, link.up ? 'the stream was unpublished meanwhile' : 'unsubscribed meanwhile'));
          return;
        }
        log.info(`${link.key}: negotiation failed: ${e.message}`);
        this._closeLink(link);
        const refused = [C.INVALID_PARAMETER, C.NOT_SUPPORTED, C.INVALID_OPERATION, C.REMOTE_STREAM_NOT_EXIST].includes(e.code);
        if (user && !(link.auto && !refused)) {
          user.reject(e);
          return;
        }
        if (user) {
          // An automatic subscription that failed for a reason a retry can cure (the
          // connection dropped, ICE timed out): keep it, rebuild it or resume it on re-join.
          link.retrying = true;
          user.reject(e);
        }
        if (e.code === C.REMOTE_STREAM_NOT_EXIST) {
          link.state = 'waiting'; // the stream went away meanwhile: wait for it
          return;
        }
        if (!link.up && [C.INVALID_PARAMETER, C.NOT_SUPPORTED, C.INVALID_OPERATION].includes(e.code)) {
          log.warn(`${link.key}: the server refused the subscription: ${e.message}`);
          this._links.delete(link.key);
          return;
        }
        this._linkFailed(link);
      };
      let pc;
      // Encoded transforms on every sender and receiver, or on none (Chromium's rule).
      const sei = this._cfg.enableSEI && seiSupported();
      try {
        pc = new RTCPeerConnection(
          Object.assign({ bundlePolicy: 'max-bundle', rtcpMuxPolicy: 'require', iceServers: [] }, sei ? { encodedInsertableStreams: true } : {})
        );
      } catch (e) {
        fail(err(C.NOT_SUPPORTED, `RTCPeerConnection: ${e.message || e}`));
        return;
      }
      link.pc = pc;
      const tracks = { audio: null, video: null };
      let remoteMs = null;
      if (!link.up) {
        pc.ontrack = (ev) => {
          if (sei) this._seiReceiver(link, ev.receiver, ev.track.kind);
          if (stale()) return;
          tracks[ev.track.kind] = ev.track;
          if (ev.streams && ev.streams[0]) remoteMs = ev.streams[0];
        };
      }
      pc.onconnectionstatechange = () => {
        if (stale()) return;
        this._pcState(link, id, pc.connectionState);
      };
      const run = async () => {
        let hasAudio, hasVideo, msg;
        let munge = false;
        const codec = link.up ? this._cfg.videoCodec : link.remote.getVideoCodec() || this._cfg.videoCodec;
        if (link.up) {
          const s = link.stream;
          hasAudio = !!s._audioTrack;
          hasVideo = !!s._videoTrack;
          link.layers = this._layersFor(link);
          for (const kind of ['audio', 'video']) {
            const track = kind === 'audio' ? s._audioTrack : s._videoTrack;
            if (!track) continue;
            const sendEncodings = kind === 'video' && link.layers ? link.layers.encodings : [this._encodingFor(s, kind)];
            const tr = pc.addTransceiver(track, { direction: 'sendonly', streams: [s._mediaStream], sendEncodings });
            tr.sender.__kind = kind;
            if (sei) this._seiSender(link, tr.sender, kind);
            if (kind === 'video' && !applyCodecPreferences(tr, codec, 'send')) munge = true;
          }
        } else {
          hasAudio = link.audio;
          hasVideo = link.video;
          if (hasAudio) pc.addTransceiver('audio', { direction: 'recvonly' });
          if (hasVideo) {
            const tr = pc.addTransceiver('video', { direction: 'recvonly' });
            if (!applyCodecPreferences(tr, codec, 'recv')) munge = true;
          }
        }
        let offer;
        try {
          offer = await pc.createOffer();
          if (munge) offer = { type: 'offer', sdp: mungeVideoCodecs(offer.sdp, codec) };
          await pc.setLocalDescription(offer);
        } catch (e) {
          throw err(C.CREATE_OFFER_FAILED, `creating the offer failed: ${e.message || e}`);
        }
        if (stale()) throw new Error('stale');
        // No waiting for ICE gathering: the server is ICE-lite and learns our address from
        // the connectivity checks.
        const sdp = pc.localDescription.sdp;
        if (link.up) {
          msg = { type: 'publish', streamType: link.type, hasAudio, hasVideo, sdp };
          if (link.layers) msg.layers = link.layers.layers;
        } else {
          msg = { type: 'subscribe', userId: link.userId, streamType: link.type, audio: hasAudio, video: hasVideo, sdp };
          const videoType = this._videoTypes.get(streamKey(link.userId, link.type));
          if (videoType) msg.videoType = videoType;
        }
        const sig = this._signal;
        if (!sig) throw err(C.SIGNAL_CHANNEL_ERROR, 'no signalling connection');
        mark.offerSent = now();
        let data;
        try {
          data = await sig.request(msg, this._t.requestTimeoutMs);
        } catch (e) {
          throw e instanceof SignalFailure ? e.requestError(C.SIGNAL_CHANNEL_ERROR) : e;
        }
        mark.answer = now();
        if (stale()) throw new Error('stale');
        if (!data || data.kind !== 'answer' || typeof data.sdp !== 'string') {
          throw err(C.ICE_TRANSPORT_ERROR, 'the server answered without an SDP answer');
        }
        link.codec = answeredVideoCodec(data.sdp);
        try {
          await pc.setRemoteDescription({ type: 'answer', sdp: data.sdp });
        } catch (e) {
          throw err(C.ICE_TRANSPORT_ERROR, `the server's answer was refused: ${e.message || e}`);
        }
        await this._waitConnected(pc, () => stale());
        mark.connected = now();
        mark.ms = mark.connected - mark.start;
        if (stale()) throw new Error('stale');
        link.tracks = tracks;
        link.remoteMs = remoteMs;
      };
      run().then(
        () => {
          if (stale()) {
            if (user) user.reject(invalidOp(undefined, link.up ? 'the stream was unpublished meanwhile' : 'unsubscribed meanwhile'));
            try {
              pc.close();
            } catch (_) {
              /* ignore */
            }
            return;
          }
          link.state = 'up';
          link.failures = 0;
          link.retrying = false;
          log.info(`${link.key}: connected in ${Math.round(mark.ms)} ms (${link.codec || 'audio only'})`);
          if (link.up) {
            // A (re-)published stream starts unmuted on the server.
            const s = link.stream;
            if (s._audioMuted && s._audioTrack) this._bestEffort({ type: 'mute', streamType: link.type, kind: 'audio', muted: true });
            if (s._videoMuted && s._videoTrack) this._bestEffort({ type: 'mute', streamType: link.type, kind: 'video', muted: true });
          } else {
            const r = link.remote;
            r._setTracks(link.audio ? link.tracks.audio : null, link.video ? link.tracks.video : null, link.remoteMs);
            this._firstFrame(link, pc, mark);
            if (!link.announced) {
              link.announced = true;
              this._emit('stream-subscribed', { stream: r });
            }
          }
          if (user) user.resolve();
        },
        (e) => {
          if (!(e instanceof RtcError)) e = err(C.UNKNOWN, String((e && e.message) || e));
          fail(e);
        }
      );
    }

    _waitConnected(pc, stale) {
      return new Promise((resolve, reject) => {
        if (pc.connectionState === 'connected') {
          resolve();
          return;
        }
        const timeout = this._t.mediaConnectTimeoutMs;
        const t = setTimeout(() => {
          pc.removeEventListener('connectionstatechange', on);
          reject(err(C.ICE_TRANSPORT_ERROR, `the peer connection did not connect within ${timeout} ms`));
        }, timeout);
        const on = () => {
          if (pc.connectionState === 'connected') {
            clearTimeout(t);
            pc.removeEventListener('connectionstatechange', on);
            resolve();
          } else if (pc.connectionState === 'failed' || pc.connectionState === 'closed' || stale()) {
            clearTimeout(t);
            pc.removeEventListener('connectionstatechange', on);
            reject(err(C.ICE_TRANSPORT_ERROR, `the peer connection ${pc.connectionState === 'failed' ? 'failed' : 'was closed'} while connecting`));
          }
        };
        pc.addEventListener('connectionstatechange', on);
      });
    }

    /** Time to the first decoded video frame (or first audio packet) of a subscription. */
    _firstFrame(link, pc, mark) {
      if (mark.firstFrame) return;
      const r = link.remote;
      r._onFirstRendered = (t) => {
        if (!mark.firstRendered) {
          mark.firstRendered = t;
          mark.renderedMs = t - mark.start;
        }
      };
      const video = link.video;
      const deadline = now() + 15000;
      const poll = async () => {
        if (mark.firstFrame || link.pc !== pc || now() > deadline) return;
        for (const s of await statsOf(pc)) {
          if (s.type !== 'inbound-rtp') continue;
          const hit = video ? kindOf(s) === 'video' && s.framesDecoded > 0 : kindOf(s) === 'audio' && s.packetsReceived > 0;
          if (hit) {
            mark.firstFrame = now();
            mark.firstFrameMs = mark.firstFrame - mark.start;
            log.info(`${link.key}: first ${video ? 'frame decoded' : 'audio'} ${Math.round(mark.firstFrameMs)} ms after subscribe`);
            return;
          }
        }
        setTimeout(poll, 20);
      };
      poll();
    }

    _pcState(link, id, state) {
      if (link.pcId !== id) return;
      if (state === 'connected') {
        clearTimeout(link.graceTimer);
        link.graceTimer = null;
        return;
      }
      if (link.state !== 'up') return; // negotiation reports its own failures
      if (state === 'failed') {
        this._linkFailed(link);
      } else if (state === 'disconnected' && !link.graceTimer) {
        // Restart ICE on the same peer connection first (its tracks and SSRCs carry on);
        // still not connected when the grace is up (or the restart failed): rebuild.
        link.graceTimer = setTimeout(() => {
          link.graceTimer = null;
          if (link.pcId === id && link.pc && link.pc.connectionState !== 'connected') this._linkFailed(link);
        }, this._t.disconnectedGraceMs);
        this._restartIce(link, id).catch((e) => {
          if (link.pcId !== id || link.state !== 'up') return;
          log.info(`${link.key}: ICE restart failed (${e && e.message}); rebuilding`);
          clearTimeout(link.graceTimer);
          link.graceTimer = null;
          this._linkFailed(link);
        });
      }
    }

    /** Offer with new ICE credentials on the link's peer connection and apply the answer. */
    async _restartIce(link, id) {
      const pc = link.pc;
      const sig = this._signal;
      if (!pc || !sig || this._phase !== 'joined') return; // a re-join renegotiates anyway
      log.info(`${link.key}: peer connection disconnected; restarting ICE`);
      const offer = await pc.createOffer({ iceRestart: true });
      await pc.setLocalDescription(offer);
      const msg = link.up
        ? { type: 'ice-restart', link: 'uplink', streamType: link.type, sdp: pc.localDescription.sdp }
        : { type: 'ice-restart', link: 'downlink', userId: link.userId, streamType: link.type, sdp: pc.localDescription.sdp };
      const data = await sig.request(msg, this._t.requestTimeoutMs);
      if (link.pcId !== id || link.pc !== pc) return;
      if (!data || data.kind !== 'answer' || typeof data.sdp !== 'string') {
        throw err(C.ICE_TRANSPORT_ERROR, 'the server answered the ICE restart without an SDP answer');
      }
      await pc.setRemoteDescription({ type: 'answer', sdp: data.sdp });
    }

    /** A link's peer connection failed: rebuild it after a delay, or give up (0x4007 / 0x4008). */
    _linkFailed(link) {
      this._closeLink(link);
      if (this._phase !== 'joined') return; // the re-join renegotiates every link
      link.failures += 1;
      if (link.failures > this._t.maxRebuilds) {
        const e = err(
          link.up ? C.UPLINK_RECONNECTION_FAILED : C.DOWNLINK_RECONNECTION_FAILED,
          `the ${link.up ? 'uplink' : 'downlink'} peer connection failed ${link.failures} times in a row`
        );
        log.warn(`${link.key}: ${e.message}`);
        this._links.delete(link.key);
        if (link.up) {
          link.stream._publisher = null;
          this._bestEffort({ type: 'unpublish', streamType: link.type });
        }
        this._emit('error', e);
        return;
      }
      const delay = this._t.rebuildDelayMs * link.failures;
      log.info(`${link.key}: rebuilding the peer connection in ${delay} ms (attempt ${link.failures})`);
      const id = link.pcId;
      link.state = 'rebuilding';
      link.rebuildTimer = setTimeout(() => {
        if (link.pcId === id && this._links.get(link.key) === link && this._phase === 'joined') this._negotiate(link, null);
      }, delay);
    }

    /** After a re-join: publish every local stream again and re-subscribe what is still there. */
    _resumeMedia(infos) {
      for (const [, link] of this._links) {
        link.failures = 0;
        if (link.up) {
          this._negotiate(link, null);
          continue;
        }
        const k = streamKey(link.userId, link.type);
        const info = infos.get(k);
        const a = info && link.wantAudio && info.hasAudio;
        const v = info && link.wantVideo && info.hasVideo;
        if (info && this._streams.get(k) === link.remote && (a || v)) {
          link.audio = !!a;
          link.video = !!v;
          this._negotiate(link, null);
        } else {
          this._closeLink(link);
          link.state = 'waiting';
        }
      }
    }

    /* ---- stats ---- */

    _upLinks() {
      return [...this._links.values()].filter((l) => l.up && l.pc);
    }
    _downLinks(type) {
      return [...this._links.values()].filter((l) => !l.up && l.pc && (!type || l.type === type));
    }

    async getTransportStats() {
      const out = { rtt: 0, downlinksRTT: {} };
      for (const l of this._upLinks()) {
        const r = rttOf(await statsOf(l.pc));
        if (r !== undefined) out.rtt = Math.max(out.rtt, r);
      }
      for (const l of this._downLinks()) {
        const r = rttOf(await statsOf(l.pc));
        if (r !== undefined) out.downlinksRTT[l.userId] = r;
      }
      return out;
    }

    async _localStats(kind) {
      const out = {};
      const link = this._links.get('up|main') || this._upLinks()[0];
      if (!link || !link.pc) return out;
      for (const s of await statsOf(link.pc)) {
        if (s.type !== 'outbound-rtp' || kindOf(s) !== kind) continue;
        const e = { bytesSent: s.bytesSent || 0, packetsSent: s.packetsSent || 0 };
        if (kind === 'video') {
          Object.assign(e, { framesEncoded: s.framesEncoded || 0, framesSent: s.framesSent || 0, frameWidth: s.frameWidth || 0, frameHeight: s.frameHeight || 0 });
        }
        out[this._cfg.userId] = e;
      }
      return out;
    }
    getLocalAudioStats() {
      return this._localStats('audio');
    }
    getLocalVideoStats() {
      return this._localStats('video');
    }

    async _remoteStats(kind, type) {
      const out = {};
      for (const l of this._downLinks(type || 'main')) {
        for (const s of await statsOf(l.pc)) {
          if (s.type !== 'inbound-rtp' || kindOf(s) !== kind) continue;
          const e = { bytesReceived: s.bytesReceived || 0, packetsReceived: s.packetsReceived || 0, packetsLost: s.packetsLost || 0 };
          if (kind === 'video') Object.assign(e, { framesDecoded: s.framesDecoded || 0, frameWidth: s.frameWidth || 0, frameHeight: s.frameHeight || 0 });
          out[l.userId] = e;
        }
      }
      return out;
    }
    getRemoteAudioStats() {
      return this._remoteStats('audio', 'main');
    }
    getRemoteVideoStats(type) {
      return this._remoteStats('video', type === 'auxiliary' ? 'auxiliary' : 'main');
    }

    /* ---- network quality (every 2 s, actors/src/quality.rs) ---- */

    _startQuality() {
      this._stopQuality();
      this._lossWindow = null;
      this._qualityTimer = setInterval(() => this._reportQuality(), this._t.networkQualityIntervalMs);
    }
    _stopQuality() {
      clearInterval(this._qualityTimer);
      this._qualityTimer = null;
    }
    async _reportQuality() {
      if (this._phase !== 'joined') return;
      let upRtt, upLoss, downRtt;
      for (const l of this._upLinks()) {
        const st = await statsOf(l.pc);
        const r = rttOf(st);
        if (r !== undefined) upRtt = Math.max(upRtt || 0, r);
        for (const s of st) {
          if (s.type === 'remote-inbound-rtp' && typeof s.fractionLost === 'number') upLoss = Math.max(upLoss || 0, s.fractionLost);
        }
      }
      let received = 0;
      let lost = 0;
      let any = false;
      for (const l of this._downLinks()) {
        const st = await statsOf(l.pc);
        const r = rttOf(st);
        if (r !== undefined) downRtt = Math.max(downRtt || 0, r);
        for (const s of st) {
          if (s.type !== 'inbound-rtp') continue;
          any = true;
          received += s.packetsReceived || 0;
          lost += Math.max(0, s.packetsLost || 0);
        }
      }
      let downLoss;
      const prev = this._lossWindow;
      this._lossWindow = { received, lost };
      if (prev) {
        const dr = Math.max(0, received - prev.received);
        const dl = Math.max(0, lost - prev.lost);
        if (dr + dl > 0) downLoss = dl / (dr + dl);
      }
      if (this._phase !== 'joined') return;
      const hasUp = this._upLinks().length > 0;
      this._emit('network-quality', {
        uplinkNetworkQuality: hasUp ? networkQuality(upLoss, upRtt, true) : 0,
        downlinkNetworkQuality: any ? networkQuality(downLoss === undefined ? 0 : downLoss, downRtt, true) : 0,
        uplinkRTT: upRtt || 0,
        uplinkLoss: upLoss || 0,
        downlinkRTT: downRtt || 0,
        downlinkLoss: downLoss || 0,
      });
    }

    /* ---- big and small streams (simulcast) ---- */

    /**
     * TRTC's enableSmallStream(): the main camera stream published from now on carries a
     * small layer beside the big one (browser simulcast, rids 'h' and 'l'). Before publish
     * (INVALID_OPERATION after). Resolves; NOT_SUPPORTED without simulcast in this browser.
     */
    enableSmallStream() {
      if (!isSmallStreamSupported()) return Promise.reject(err(C.NOT_SUPPORTED, 'this browser cannot send simulcast'));
      if (this._links.has('up|main')) return Promise.reject(invalidOp(undefined, 'enableSmallStream() must come before publish()'));
      this._smallStream = true;
      return Promise.resolve();
    }
    disableSmallStream() {
      if (this._links.has('up|main')) return Promise.reject(invalidOp(undefined, 'disableSmallStream() must come before publish() or after unpublish()'));
      this._smallStream = false;
      return Promise.resolve();
    }
    /** TRTC's setSmallStreamProfile({width, height, bitrate (kbps), frameRate}). */
    setSmallStreamProfile(profile) {
      const p = profile || {};
      const next = Object.assign({}, this._smallProfile);
      for (const k of ['width', 'height', 'bitrate', 'frameRate']) {
        if (isNil(p[k])) continue;
        if (!(Number.isFinite(p[k]) && p[k] > 0)) throw invalidParam(EXTRA.PARAM_RANGE, `small stream ${k} must be a positive number, got ${short(p[k])}`);
        next[k] = p[k];
      }
      this._smallProfile = next;
    }
    /**
     * TRTC's setRemoteVideoStreamType(remoteStream, 'big' | 'small'): which layer of a
     * simulcast stream to receive (now if subscribed, else at subscribe). The switch comes at
     * the layer's next keyframe ('video-layer-changed' then). A stream without a small
     * layer goes on as it is.
     */
    setRemoteVideoStreamType(remoteStream, type) {
      if (!(remoteStream instanceof RemoteStream)) return Promise.reject(invalidParam(EXTRA.PARAM_TYPE, 'setRemoteVideoStreamType() needs a RemoteStream'));
      if (type !== 'big' && type !== 'small') return Promise.reject(invalidParam(EXTRA.PARAM_RANGE, `the type must be 'big' or 'small', got ${short(type)}`));
      const k = streamKey(remoteStream.getUserId(), remoteStream.getType());
      this._videoTypes.set(k, type);
      const link = this._links.get(`down|${k}`);
      if (!link || link.state !== 'up' || !this._signal) return Promise.resolve();
      return this._signal
        .request({ type: 'set-remote-video-stream-type', userId: link.userId, streamType: link.type, videoType: type }, this._t.requestTimeoutMs)
        .then(() => undefined, (e) => {
          throw e instanceof SignalFailure ? e.requestError(C.SIGNAL_CHANNEL_ERROR) : e;
        });
    }

    /** The simulcast encodings of a published main video with a small stream (else null). */
    _layersFor(link) {
      const s = link.stream;
      if (!this._smallStream || link.type !== 'main' || !s._videoTrack) return null;
      const big = s._videoProfile;
      const small = this._smallProfile;
      const settings = (s._videoTrack.getSettings && s._videoTrack.getSettings()) || {};
      const width = settings.width || big.width || 640;
      const height = settings.height || big.height || 480;
      const down = Math.max(1, Math.min(width / small.width, height / small.height));
      const h = Object.assign({ rid: 'h' }, this._encodingFor(s, 'video'));
      const l = { rid: 'l', scaleResolutionDownBy: down, maxBitrate: small.bitrate * 1000, maxFramerate: small.frameRate };
      return {
        encodings: [l, h],
        layers: [
          { rid: 'h', width, height, bitrateKbps: big.bitrate || 500 },
          { rid: 'l', width: Math.round(width / down), height: Math.round(height / down), bitrateKbps: small.bitrate },
        ],
      };
    }

    /** Dynacast: pause the layers nobody receives, resume the wanted ones. */
    async _setActiveLayers(streamType, rids) {
      const link = this._links.get(`up|${streamType}`);
      if (!link || !link.pc || !link.layers) return;
      for (const sender of link.pc.getSenders()) {
        if (!sender.track || sender.track.kind !== 'video' || !sender.getParameters) continue;
        try {
          const params = sender.getParameters();
          let changed = false;
          for (const e of params.encodings || []) {
            const active = rids.includes(e.rid);
            if (e.rid && e.active !== active) {
              e.active = active;
              changed = true;
            }
          }
          if (changed) await sender.setParameters(params);
        } catch (e) {
          log.debug('pausing simulcast layers failed', e);
        }
      }
    }

    /* ---- TRTC v4 APIs rtcroom does not offer ---- */
    enableAudioVolumeEvaluation(interval) {
      clearInterval(this._volumeTimer);
      const ms = Number(interval);
      if (!(ms > 0)) return;
      this._volumeTimer = setInterval(() => {
        const result = [];
        for (const [, l] of this._links) {
          const s = l.up ? l.stream : l.remote;
          if (s && s.getAudioTrack()) result.push({ userId: s.getUserId(), audioVolume: Math.round(s.getAudioLevel() * 100), stream: s });
        }
        this._emit('audio-volume', { result });
      }, Math.max(16, ms));
    }
    startMixTranscode() {
      return Promise.reject(err(C.NOT_SUPPORTED, 'mix transcoding is not supported by rtcroom'));
    }
    stopMixTranscode() {
      return Promise.resolve();
    }
    startPublishCDNStream() {
      return Promise.reject(err(C.NOT_SUPPORTED, 'CDN relay is not supported by rtcroom'));
    }
    stopPublishCDNStream() {
      return Promise.resolve();
    }
    /**
     * TRTC's sendSEIMessage(buffer, {seiPayloadType, toSubStream}): the data (1 byte to 1 KB)
     * rides the next H.264 frame of the published main (or auxiliary) stream; subscribers
     * get 'sei-message' {userId, data, seiPayloadType, isFromAuxiliary}. Needs
     * createClient({enableSEI: true}) and a browser with encoded transforms. Payload type
     * 243 (default) or 5 (the data starts with a 16-byte UUID); at most 30 messages and
     * 8 KB per second.
     */
    sendSEIMessage(buffer, options = {}) {
      this._checkAlive('sendSEIMessage');
      if (!this._cfg.enableSEI) throw invalidOp(undefined, 'sendSEIMessage() needs createClient({enableSEI: true})');
      if (!seiSupported()) throw err(C.NOT_SUPPORTED, 'this browser has no encoded transforms (RTCRtpSender.createEncodedStreams)');
      let bytes;
      if (buffer instanceof ArrayBuffer) bytes = new Uint8Array(buffer);
      else if (ArrayBuffer.isView(buffer)) bytes = new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength);
      else throw invalidParam(EXTRA.PARAM_TYPE, 'buffer must be an ArrayBuffer or a typed array');
      const type = isNil(options.seiPayloadType) ? 243 : options.seiPayloadType;
      if (!SEI_TYPES.includes(type)) throw invalidParam(EXTRA.PARAM_RANGE, `seiPayloadType must be 5 or 243, got ${short(type)}`);
      if (bytes.length === 0) throw invalidParam(EXTRA.EMPTY_BUFFER, 'buffer cannot be empty');
      if (bytes.length > 1024) throw invalidParam(EXTRA.BUFFER_OVERSIZE, `buffer is at most 1024 bytes, got ${bytes.length}`);
      if (type === 5 && bytes.length < 16) throw invalidParam(EXTRA.PARAM_RANGE, 'seiPayloadType 5 needs the 16-byte UUID first');
      this._requireJoined('sendSEIMessage');
      const link = this._links.get(`up|${options.toSubStream ? 'auxiliary' : 'main'}`);
      if (!link || link.state !== 'up' || !link.stream || !link.stream._videoTrack || link.codec !== 'h264') {
        throw invalidOp(undefined, 'SEI messages ride H.264 video: publish a stream with H.264 video first');
      }
      const now = Date.now();
      const b = (this._seiBudget = this._seiBudget || { messages: 30, bytes: 8192, at: now });
      const dt = (now - b.at) / 1000;
      b.messages = Math.min(30, b.messages + dt * 30);
      b.bytes = Math.min(8192, b.bytes + dt * 8192);
      b.at = now;
      if (b.messages < 1 || b.bytes < bytes.length) throw invalidOp(undefined, 'over the SEI limits (30 messages and 8 KB per second); not sent');
      b.messages -= 1;
      b.bytes -= bytes.length;
      link.sei = link.sei || [];
      if (link.sei.length >= 64) link.sei.shift();
      link.sei.push({ type, data: Array.from(bytes) });
    }

    /** Pass a sender's encoded frames through, putting queued SEI messages into H.264 video. */
    _seiSender(link, sender, kind) {
      const { readable, writable } = sender.createEncodedStreams();
      const transform = new TransformStream({
        transform: (frame, ctl) => {
          if (kind === 'video' && link.sei && link.sei.length && link.codec === 'h264') {
            try {
              frame.data = insertSei(frame.data, seiNal(link.sei.splice(0)));
            } catch (e) {
              log.warn(`SEI not inserted: ${e && e.message}`);
            }
          }
          ctl.enqueue(frame);
        },
      });
      readable.pipeThrough(transform).pipeTo(writable).catch(() => {});
    }

    /** Pass a receiver's encoded frames through, reporting the SEI messages of H.264 video. */
    _seiReceiver(link, receiver, kind) {
      const { readable, writable } = receiver.createEncodedStreams();
      const transform = new TransformStream({
        transform: (frame, ctl) => {
          if (kind === 'video' && link.codec === 'h264') {
            try {
              for (const m of parseSei(frame.data)) {
                this._emit('sei-message', { userId: link.userId, data: m.data, seiPayloadType: m.type, isFromAuxiliary: link.type === 'auxiliary' });
              }
            } catch (e) {
              log.warn(`SEI not read: ${e && e.message}`);
            }
          }
          ctl.enqueue(frame);
        },
      });
      readable.pipeThrough(transform).pipeTo(writable).catch(() => {});
    }
  }

  /* ------------------------------------------------------------------------------------
   * The TRTC namespace
   * ---------------------------------------------------------------------------------- */
  function videoCaps(direction) {
    try {
      const Caps = direction === 'send' ? G.RTCRtpSender : G.RTCRtpReceiver;
      const c = Caps && Caps.getCapabilities && Caps.getCapabilities('video');
      return c ? c.codecs : null;
    } catch (_) {
      return null;
    }
  }

  async function sdpCodecs() {
    // Fallback without getCapabilities: look at what an offer would carry.
    const pc = new RTCPeerConnection();
    try {
      pc.addTransceiver('video', { direction: 'sendrecv' });
      const o = await pc.createOffer();
      return { h264: /a=rtpmap:\d+ H264\/90000/i.test(o.sdp), vp8: /a=rtpmap:\d+ VP8\/90000/i.test(o.sdp) };
    } finally {
      pc.close();
    }
  }

  async function checkSystemRequirements() {
    const nav = G.navigator || {};
    const isWebRTCSupported = typeof G.RTCPeerConnection === 'function';
    const isMediaDevicesSupported = !!(nav.mediaDevices && nav.mediaDevices.getUserMedia);
    const detail = {
      isBrowserSupported: isWebRTCSupported && typeof G.WebSocket === 'function' && typeof G.MediaStream === 'function',
      isWebRTCSupported,
      isMediaDevicesSupported,
      isH264EncodeSupported: false,
      isH264DecodeSupported: false,
      isVp8EncodeSupported: false,
      isVp8DecodeSupported: false,
    };
    if (isWebRTCSupported) {
      const has = (list, codec) =>
        !!list && list.some((c) => {
          const m = c.mimeType.toLowerCase();
          return codec === 'h264' ? m === 'video/h264' && h264Info(c.sdpFmtpLine).pm1 : m === 'video/vp8';
        });
      const send = videoCaps('send');
      const recv = videoCaps('recv');
      if (send && recv) {
        detail.isH264EncodeSupported = has(send, 'h264');
        detail.isH264DecodeSupported = has(recv, 'h264');
        detail.isVp8EncodeSupported = has(send, 'vp8');
        detail.isVp8DecodeSupported = has(recv, 'vp8');
      } else {
        try {
          const c = await sdpCodecs();
          detail.isH264EncodeSupported = detail.isH264DecodeSupported = c.h264;
          detail.isVp8EncodeSupported = detail.isVp8DecodeSupported = c.vp8;
        } catch (_) {
          /* leave false */
        }
      }
    }
    const codecs =
      (detail.isH264EncodeSupported && detail.isH264DecodeSupported) ||
      (detail.isVp8EncodeSupported && detail.isVp8DecodeSupported);
    return { result: detail.isBrowserSupported && isMediaDevicesSupported && codecs, detail };
  }

  async function getDevices() {
    const md = G.navigator && G.navigator.mediaDevices;
    if (!md || !md.enumerateDevices) return [];
    return md.enumerateDevices();
  }

  const TRTC = {
    VERSION,
    Logger,
    ERROR_CODE,
    RtcError,
    checkSystemRequirements,
    isScreenShareSupported: () => !!(G.navigator && G.navigator.mediaDevices && G.navigator.mediaDevices.getDisplayMedia),
    isSmallStreamSupported,
    getDevices,
    getCameras: async () => (await getDevices()).filter((d) => d.kind === 'videoinput'),
    getMicrophones: async () => (await getDevices()).filter((d) => d.kind === 'audioinput'),
    getSpeakers: async () => (await getDevices()).filter((d) => d.kind === 'audiooutput'),
    /** TRTC.createClient(config): throws an RtcError at once for a bad config. */
    createClient(config) {
      return new Client(validateClientConfig(config));
    },
    /** TRTC.createStream(config): a LocalStream; call initialize() before publishing. */
    createStream(config) {
      return new LocalStream(config);
    },
    /** rtcroom: the pure checks createClient()/join() run, for tests (not TRTC API). */
    _validate: Object.freeze({
      clientConfig: (c) => validateClientConfig(c),
      joinOptions: (o, useStringRoomId) => validateJoinOptions(o, !!useStringRoomId),
    }),
    /** rtcroom: SDP helpers, for tests (not TRTC API). */
    _sdp: Object.freeze({ mungeVideoCodecs, answeredVideoCodec, orderedCodecs }),
  };

  G.TRTC = TRTC;
})();
