// AudioWorklet: forwards the first input channel to the page as float32 chunks of ~100 ms.
class PcmForwarder extends AudioWorkletProcessor {
  constructor() {
    super();
    this.size = Math.round(sampleRate / 10);
    this.chunk = new Float32Array(this.size);
    this.n = 0;
  }

  process(inputs) {
    const ch = inputs[0] && inputs[0][0];
    if (ch) {
      for (let i = 0; i < ch.length; i++) {
        this.chunk[this.n++] = ch[i];
        if (this.n === this.size) {
          this.port.postMessage(this.chunk.buffer, [this.chunk.buffer]); // transferred: chunk is detached now
          this.chunk = new Float32Array(this.size);
          this.n = 0;
        }
      }
    }
    return true;
  }
}

registerProcessor("pcm-forwarder", PcmForwarder);
