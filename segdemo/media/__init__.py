"""Streams of frames on top of Session: live webcam frames (`live`: latest frame wins, rolling stats) and video
files (`video_job`: decode → segment → encode job; `video_io`: probe, frames, H.264 encoder; `video_limits`: allowed
formats and limits; `video_child` + `video_decode`: FFmpeg in a decoder process per job).
"""
