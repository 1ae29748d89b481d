// Images, voice and files through the app API (docs/app-api.md): uploads with progress, and downloads
// fetched with the user's token into blob: URLs. The token is sent only to this page's own app API
// origin, never to a URL some message names elsewhere, and never in a URL.

export class Media {
  constructor(prefix, token) {
    this.prefix = prefix; // e.g. "/v2", or null when no app API is served here
    this.token = token;
    this.cache = new Map(); // url → Promise<blob: URL>
  }

  get available() { return this.prefix !== null && this.prefix !== undefined; }

  /** POSTs `file` to /images, /audios or /files; `onProgress(fraction)`; resolves to the JSON answer. */
  upload(kind, file, onProgress) {
    return new Promise((resolve, reject) => {
      if (!this.available) return reject(new Error('uploads are not served on this address'));
      const xhr = new XMLHttpRequest();
      xhr.open('POST', `${this.prefix}/${kind}`);
      xhr.setRequestHeader('Authorization', `Bearer ${this.token}`);
      xhr.setRequestHeader('Content-Type', file.type || 'application/octet-stream');
      xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
      xhr.onload = () => {
        let body = null;
        try { body = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
        if (xhr.status === 200 && body) return resolve(body);
        const why = body && body.meta ? body.meta.message : xhr.statusText || 'upload failed';
        reject(new Error(`${xhr.status}: ${why}`));
      };
      xhr.onerror = () => reject(new Error('network error during upload'));
      xhr.send(file);
    });
  }

  /** Whether `url` points at this page's app API (the only place the token may go). */
  trusted(url) {
    if (!this.available) return false;
    let u;
    try { u = new URL(url, location.href); } catch { return false; }
    return u.origin === location.origin && u.pathname.startsWith(`${this.prefix}/`);
  }

  /** A blob: URL for media at `url` (fetched with the token), cached. */
  blobUrl(url) {
    if (!this.trusted(url)) return Promise.reject(new Error('media from another site is not loaded'));
    let p = this.cache.get(url);
    if (!p) {
      p = fetch(new URL(url, location.href), { headers: { Authorization: `Bearer ${this.token}` } })
        .then((r) => { if (!r.ok) throw new Error(`${r.status} loading media`); return r.blob(); })
        .then((b) => URL.createObjectURL(b));
      p.catch(() => this.cache.delete(url));
      this.cache.set(url, p);
    }
    return p;
  }

  thumbnail(url) { return this.blobUrl(`${url}@256w_256h_0c`); }
}

/** Width and height of an image file, read in the browser before the upload. */
export function imageSize(file) {
  return new Promise((resolve) => {
    const url = URL.createObjectURL(file);
    const img = new Image();
    img.onload = () => { resolve({ width: img.naturalWidth, height: img.naturalHeight }); URL.revokeObjectURL(url); };
    img.onerror = () => { resolve({ width: 0, height: 0 }); URL.revokeObjectURL(url); };
    img.src = url;
  });
}
