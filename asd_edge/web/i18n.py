"""The dashboard's words in English and Japanese, chosen by the browser's language."""

from __future__ import annotations

from typing import Final

__all__ = ["LANGUAGES", "STRINGS", "choose_language"]

LANGUAGES: Final = ("en", "ja")

STRINGS: Final[dict[str, dict[str, str]]] = {
    "en": {
        "title": "asd-edge",
        "fleet": "Devices",
        "device": "Device",
        "online": "online",
        "offline": "offline",
        "unknown": "unknown",
        "monitors": "Monitors",
        "monitor": "Monitor",
        "anomaly": "anomaly",
        "normal": "normal",
        "machine": "Machine",
        "running": "running",
        "stopped": "stopped",
        "last_alert": "Last alert",
        "model": "Model",
        "models": "Models",
        "problems": "Problems",
        "none": "none",
        "no_devices": "No device has been heard on the broker yet.",
        "live": "Live",
        "waterfall": "Spectrum (newest at the right)",
        "level": "Level",
        "score_index": "Score index (1 = threshold)",
        "alerts": "Alerts",
        "no_alerts": "No alert since the dashboard started.",
        "time": "Time",
        "duration": "Duration",
        "peak": "Peak score",
        "threshold": "Threshold",
        "evidence": "Evidence",
        "clip": "Clip",
        "health": "Health",
        "ticks": "Tick p50 / p95",
        "cpu": "CPU",
        "rss": "Memory (RSS)",
        "outbox": "Outbox",
        "disk": "Clips on disk",
        "input": "Input",
        "version": "Version",
        "source": "Source",
        "previous": "Previous",
        "loaded_at": "Loaded",
        "last_push": "Last push",
        "learning": "Learning",
        "actions": "Actions",
        "rollback": "Roll back to the previous model",
        "learn": "Learn normal sound",
        "seconds": "seconds",
        "false_alarm": "False alarm",
        "answer": "Answer",
        "sent": "sent…",
        "login": "Log in",
        "logout": "Log out",
        "password": "Password",
        "wrong_password": "Wrong password.",
        "actions_need_login": "Log in to use actions.",
        "actions_need_password": (
            "Actions need a password: run asd-edge web --set-password on the device."
        ),
        "confirm": "Are you sure?",
        "no_live": "No live data: is the daemon running and connected?",
        "dbfs": "dBFS",
        "hz": "Hz",
        "s": "s",
        "back": "All devices",
        "local_time": "time (this browser's clock)",
        "bands": "64 mel bands, low at the bottom",
    },
    "ja": {
        "title": "asd-edge",
        "fleet": "デバイス一覧",
        "device": "デバイス",
        "online": "オンライン",
        "offline": "オフライン",
        "unknown": "不明",
        "monitors": "モニター",
        "monitor": "モニター",
        "anomaly": "異常",
        "normal": "正常",
        "machine": "機械",
        "running": "運転中",
        "stopped": "停止中",
        "last_alert": "最新のアラート",
        "model": "モデル",
        "models": "モデル",
        "problems": "問題",
        "none": "なし",
        "no_devices": "ブローカー上にまだデバイスが見つかりません。",
        "live": "ライブ",
        "waterfall": "スペクトル（右端が最新）",
        "level": "レベル",
        "score_index": "スコア指標（1 = しきい値）",
        "alerts": "アラート",
        "no_alerts": "ダッシュボード起動以降のアラートはありません。",
        "time": "時刻",
        "duration": "継続時間",
        "peak": "最大スコア",
        "threshold": "しきい値",
        "evidence": "根拠（周波数帯）",
        "clip": "録音",
        "health": "稼働状況",
        "ticks": "処理時間 p50 / p95",
        "cpu": "CPU",
        "rss": "メモリ (RSS)",
        "outbox": "送信待ち",
        "disk": "録音の容量",
        "input": "入力",
        "version": "バージョン",
        "source": "入手元",
        "previous": "前のモデル",
        "loaded_at": "読み込み時刻",
        "last_push": "最後のプッシュ",
        "learning": "学習",
        "actions": "操作",
        "rollback": "前のモデルに戻す",
        "learn": "正常音を学習",
        "seconds": "秒",
        "false_alarm": "誤報",
        "answer": "応答",
        "sent": "送信中…",
        "login": "ログイン",
        "logout": "ログアウト",
        "password": "パスワード",
        "wrong_password": "パスワードが違います。",
        "actions_need_login": "操作するにはログインしてください。",
        "actions_need_password": (
            "操作にはパスワードが必要です。"
            "デバイスで asd-edge web --set-password を実行してください。"
        ),
        "confirm": "実行しますか？",
        "no_live": "ライブデータがありません。デーモンは起動して接続していますか？",
        "dbfs": "dBFS",
        "hz": "Hz",
        "s": "秒",
        "back": "デバイス一覧へ",
        "local_time": "時刻（このブラウザの時計）",
        "bands": "メル尺度 64 帯域、下が低域",
    },
}
"""Every word the pages show, per language (the same keys in each)."""


def choose_language(accept_language: str | None) -> str:
    """The first supported language of an ``Accept-Language`` header, by quality; ``en``."""
    best, best_q = "en", -1.0
    for position, part in enumerate((accept_language or "").split(",")[:32]):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                continue
        lang = tag.strip().lower().split("-")[0]
        q -= position * 1e-6  # earlier wins among equals
        if lang in LANGUAGES and q > best_q:
            best, best_q = lang, q
    return best
